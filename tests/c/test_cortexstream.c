/*
 * Tests of the C API against the real SmolLM2 and MiniLM models and llama.cpp's reference
 * outputs (reference.h is generated from tests/fixtures/smollm2_reference.json by run.sh), and
 * the C door of the shared bad-input matrix (matrix.h, from tests/hardening/bad_inputs.json).
 *
 * usage: test_cortexstream [MODELS_DIR]   (default: $CORTEXSTREAM_CACHE/models or
 *                                          ~/.cache/cortexstream/models)
 * Prints one line per test and finally "N passed, M failed"; exits non-zero on failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cortexstream.h"
#include "reference.h"

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))

/* ---------- a minimal test harness ---------- */

static int checks_failed_in_test;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            checks_failed_in_test++;                                        \
            fprintf(stderr, "  %s:%d: check failed: %s\n    ", __FILE__,    \
                    __LINE__, #cond);                                       \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
        }                                                                   \
    } while (0)

/* A call that must succeed; on failure shows the library's message. */
#define CHECK_OK(call)                                                      \
    do {                                                                    \
        cs_status status_ = (call);                                         \
        CHECK(status_ == CS_OK, "%s returned %d: %s", #call, (int)status_,  \
              cs_last_error_message());                                     \
    } while (0)

/* A call that must fail with `expected`, naming `param` (NULL: any) in the error. */
#define CHECK_FAILS(call, expected, param)                                  \
    do {                                                                    \
        cs_status status_ = (call);                                         \
        CHECK(status_ == (expected), "%s returned %d, expected %s (%d)",    \
              #call, (int)status_, #expected, (int)(expected));             \
        check_error_names(param);                                           \
    } while (0)

static void check_error_names(const char *param) {
    const char *message = cs_last_error_message();
    CHECK(message != NULL && message[0] != '\0', "no error message was set");
    if (param == NULL) return;
    const char *named = cs_last_error_param();
    CHECK(named != NULL && strcmp(named, param) == 0,
          "cs_last_error_param() is \"%s\", expected \"%s\" (message: %s)",
          named ? named : "(null)", param, message);
    CHECK(strstr(message, param) != NULL, "message \"%s\" does not name \"%s\"",
          message, param);
}

/* ---------- shared fixtures ---------- */

static cs_engine *engine; /* SmolLM2 + MiniLM, used by most tests */
static char models_dir[4096];

static void model_paths(char *gguf, char *minilm, size_t size) {
    snprintf(gguf, size, "%s/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", models_dir);
    snprintf(minilm, size, "%s/minilm", models_dir);
}

/* Small KV cache: the tests never need the default 16k tokens of it. */
static cs_engine *new_engine(bool with_embeddings) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;
    params.embedding_model_path = with_embeddings ? minilm : NULL;
    params.kv_cache_tokens = 4096;
    cs_engine *created = NULL;
    CHECK_OK(cs_engine_new(&params, &created));
    return created;
}

static cs_sampling_params greedy_params(int64_t max_tokens) {
    cs_sampling_params params = cs_sampling_default_params();
    params.temperature = 0.0f;
    params.top_k = 0;
    params.top_p = 1.0f;
    params.min_p = 0.0f;
    params.max_tokens = max_tokens;
    return params;
}

/* What a finished stream produced. */
typedef struct {
    uint32_t ids[4096];
    size_t ids_len;
    char text[16384];
    size_t text_len;
    int token_events_with_logprobs;
    cs_event finished; /* copy of the FINISHED event (its pointers are not kept) */
    char stop_string[64]; /* copy of finished.stop_string ("" when NULL) */
    bool has_finished;
    int events_after_finished;
} stream_result;

static void record_event(stream_result *result, const cs_event *event) {
    if (result->has_finished) {
        result->events_after_finished++;
        return;
    }
    if (event->kind == CS_EVENT_FINISHED) {
        result->finished = *event;
        if (event->stop_string != NULL)
            snprintf(result->stop_string, sizeof result->stop_string, "%.*s", (int)event->stop_string_len,
                     event->stop_string);
        result->has_finished = true;
        return;
    }
    if (result->ids_len < COUNT_OF(result->ids)) result->ids[result->ids_len++] = event->token_id;
    if (result->text_len + event->text_len < sizeof result->text) {
        memcpy(result->text + result->text_len, event->text, event->text_len);
        result->text_len += event->text_len;
        result->text[result->text_len] = '\0';
    }
    if (event->has_logprobs) result->token_events_with_logprobs++;
}

/* Pulls every event of `request` into `result`; stops on any status but CS_OK. */
static cs_status drain(cs_request *request, stream_result *result) {
    for (;;) {
        const cs_event *event = NULL;
        cs_status status = cs_request_next_event(request, -1, &event);
        if (status != CS_OK) return status;
        record_event(result, event);
    }
}

static stream_result greedy_reference_run; /* filled by test_greedy_matches_llama_cpp */

/* Sleeps until `*counter` reaches `target`; false if that takes over 60 s. */
static bool wait_for_count(atomic_size_t *counter, size_t target) {
    for (int ms = 0; ms < 60000; ms++) {
        if (atomic_load(counter) >= target) return true;
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    return false;
}

/* ---------- engine metrics: steps, idleness, KV blocks ---------- */

static cs_metrics metrics_of(const cs_engine *of) {
    cs_metrics metrics;
    memset(&metrics, 0, sizeof metrics);
    metrics.struct_size = sizeof metrics;
    CHECK_OK(cs_engine_metrics(of, &metrics));
    return metrics;
}

/* Polls until nothing is queued or running (at most 60 s: a hang guard, not a timing
 * check); `*last` receives the last metrics read. False if the engine never went idle. */
static bool wait_idle(const cs_engine *of, cs_metrics *last) {
    for (int tries = 0; tries < 6000; tries++) {
        *last = metrics_of(of);
        if (last->running == 0 && last->queue_depth == 0) return true;
        struct timespec pause = {0, 10000000};
        nanosleep(&pause, NULL);
    }
    return false;
}

/* Every test ends here for each engine it used: once idle, every KV block is free again
 * (issue 17: a block still held then is a leak). */
static void check_idle_with_all_kv_blocks_free(const cs_engine *of, const char *label) {
    cs_metrics metrics;
    CHECK(wait_idle(of, &metrics), "%s: not idle within 60 s (%llu running, %llu queued)", label,
          (unsigned long long)metrics.running, (unsigned long long)metrics.queue_depth);
    CHECK(metrics.kv_blocks_total > 0 && metrics.kv_blocks_free == metrics.kv_blocks_total,
          "%s: %llu of %llu KV blocks free once idle", label, (unsigned long long)metrics.kv_blocks_free,
          (unsigned long long)metrics.kv_blocks_total);
    CHECK(metrics.kv_sliding_blocks_free == metrics.kv_sliding_blocks_total,
          "%s: %llu of %llu sliding-window KV blocks free once idle", label,
          (unsigned long long)metrics.kv_sliding_blocks_free, (unsigned long long)metrics.kv_sliding_blocks_total);
}

/* ---------- tests ---------- */

static void test_version_matches_header(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", CS_VERSION_MAJOR, CS_VERSION_MINOR,
             CS_VERSION_PATCH);
    CHECK(strcmp(cs_version(), expected) == 0, "cs_version() is %s, header says %s",
          cs_version(), expected);
}

static void test_model_info(void) {
    cs_model_info info;
    info.struct_size = sizeof info;
    CHECK_OK(cs_engine_model_info(engine, &info));
    CHECK(info.vocab_size == 49152, "vocab_size %zu", info.vocab_size);
    CHECK(info.context_length > 0, "context_length %zu", info.context_length);
    CHECK(strcmp(info.architecture, "llama") == 0, "architecture %s", info.architecture);
    CHECK(info.name != NULL && info.name[0] != '\0', "empty model name");
    CHECK(info.embedding_model_name != NULL, "embedding model name is NULL");
    CHECK(info.embedding_dim == 384, "embedding_dim %zu", info.embedding_dim);

    /* A caller built against an older, shorter struct gets only the fields it knows. */
    cs_model_info older;
    memset(&older, 0xAB, sizeof older);
    older.struct_size = offsetof(cs_model_info, context_length);
    CHECK_OK(cs_engine_model_info(engine, &older));
    CHECK(older.struct_size == offsetof(cs_model_info, context_length), "struct_size overwritten");
    CHECK(older.architecture != NULL && strcmp(older.architecture, "llama") == 0, "architecture missing");
    CHECK(older.vocab_size == (size_t)0xABABABABABABABABull, "wrote past the caller's struct_size");
}

static void test_older_params_struct_gets_defaults(void) {
    cs_sampling_params params = greedy_params(2);
    /* Fields past struct_size are not the caller's; the library must use its defaults. */
    params.struct_size = offsetof(cs_sampling_params, ignore_eos);
    params.logprobs = 1000;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    stream_result *result = calloc(1, sizeof *result);
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK(result->ids_len == 2 && result->ids[0] == REF_GREEDY_IDS[0], "%zu tokens, first %u",
          result->ids_len, result->ids[0]);
    CHECK(result->token_events_with_logprobs == 0, "logprobs were read past struct_size");
    free(result);
    CHECK_OK(cs_request_free(request));
}

/* A copy of SmolLM2 whose `tokenizer.chat_template` key is renamed (same length, same layout):
 * a model without a chat template, like a base model. Returns false if it cannot be written. */
static bool write_model_without_template(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (in == NULL) return false;
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *bytes = size > 0 ? malloc((size_t)size) : NULL;
    bool ok = bytes != NULL && fread(bytes, 1, (size_t)size, in) == (size_t)size;
    fclose(in);
    const char *key = "tokenizer.chat_template";
    size_t key_len = strlen(key);
    bool renamed = false;
    for (size_t at = 0; ok && !renamed && at + key_len <= (size_t)size; at++) {
        if (memcmp(bytes + at, key, key_len) == 0) {
            bytes[at + key_len - 1] = 'X';
            renamed = true;
        }
    }
    FILE *out = renamed ? fopen(to, "wb") : NULL;
    ok = out != NULL && fwrite(bytes, 1, (size_t)size, out) == (size_t)size;
    if (out != NULL) ok = fclose(out) == 0 && ok;
    free(bytes);
    return ok;
}

static cs_engine *new_small_engine(const char *gguf, const char *chat_template) {
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;
    params.kv_cache_tokens = 512;
    params.chat_template = chat_template;
    cs_engine *created = NULL;
    CHECK_OK(cs_engine_new(&params, &created));
    return created;
}

/* The engine param `chat_template` replaces the model's template (and a broken one is refused
 * naming it); a model without a template refuses chat with CS_CHAT_TEMPLATE naming `messages`
 * instead of guessing a format, yet still completes text. */
static void test_chat_template_param_and_missing_template(void) {
    char gguf[4200], minilm[4200], base[4300];
    model_paths(gguf, minilm, sizeof gguf);
    cs_chat_message message = {"user", "hi"};
    char *text = NULL;
    size_t len = 0;

    cs_engine *custom = new_small_engine(gguf, "T: {{ messages[0]['content'] }}");
    if (custom != NULL) {
        CHECK_OK(cs_engine_apply_chat_template(custom, &message, 1, true, &text, &len));
        CHECK(text != NULL && strcmp(text, "T: hi") == 0, "rendered \"%s\"", text ? text : "(null)");
        CHECK_OK(cs_string_free(text));
        check_idle_with_all_kv_blocks_free(custom, "engine with a chat_template param");
        CHECK_OK(cs_engine_free(custom));
    }
    cs_engine_params broken = cs_engine_default_params();
    broken.model_path = gguf;
    broken.chat_template = "{% for %}";
    cs_engine *refused = NULL;
    CHECK_FAILS(cs_engine_new(&broken, &refused), CS_INVALID_ARGUMENT, "chat_template");

    snprintf(base, sizeof base, "/tmp/cortexstream-c-test-base-model-%ld.gguf", (long)time(NULL));
    CHECK(write_model_without_template(gguf, base), "cannot write %s", base);
    cs_engine *no_template = new_small_engine(base, NULL);
    remove(base); /* the engine maps what it needs at load */
    if (no_template == NULL) return;
    text = NULL;
    CHECK_FAILS(cs_engine_apply_chat_template(no_template, &message, 1, true, &text, &len), CS_CHAT_TEMPLATE,
                "messages");
    CHECK(strstr(cs_last_error_message(), "chat_template") != NULL, "%s", cs_last_error_message());
    cs_sampling_params params = greedy_params(2);
    cs_request *request = NULL;
    CHECK_FAILS(cs_engine_submit_chat(no_template, &message, 1, &params, NULL, NULL, &request), CS_CHAT_TEMPLATE,
                "messages");
    CHECK_OK(cs_engine_submit_text(no_template, "The capital of France is", &params, NULL, NULL, &request));
    if (request != NULL) {
        stream_result *result = calloc(1, sizeof *result);
        CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
        CHECK(result->ids_len == 2, "plain completion gave %zu tokens", result->ids_len);
        free(result);
        CHECK_OK(cs_request_free(request));
    }
    check_idle_with_all_kv_blocks_free(no_template, "engine without a chat template");
    CHECK_OK(cs_engine_free(no_template));
}

static void test_greedy_matches_llama_cpp(void) {
    cs_sampling_params params = greedy_params((int64_t)COUNT_OF(REF_GREEDY_IDS));
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    stream_result *result = &greedy_reference_run;
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK(result->ids_len == COUNT_OF(REF_GREEDY_IDS), "got %zu tokens", result->ids_len);
    for (size_t i = 0; i < COUNT_OF(REF_GREEDY_IDS) && i < result->ids_len; i++) {
        CHECK(result->ids[i] == REF_GREEDY_IDS[i], "token %zu is %u, llama.cpp gave %u", i,
              result->ids[i], REF_GREEDY_IDS[i]);
    }
    CHECK(result->has_finished, "no FINISHED event");
    const cs_event *fin = &result->finished;
    CHECK(fin->finish_reason == CS_FINISH_LENGTH, "finish reason %d", (int)fin->finish_reason);
    CHECK(fin->stop_kind == CS_STOP_LENGTH && fin->stop_token_id == 0 && fin->stop_string == NULL,
          "stop kind %d, token %u", (int)fin->stop_kind, fin->stop_token_id);
    CHECK(fin->usage.prompt_tokens == COUNT_OF(REF_PROMPT_IDS), "prompt_tokens %zu",
          fin->usage.prompt_tokens);
    CHECK(fin->usage.completion_tokens == COUNT_OF(REF_GREEDY_IDS), "completion_tokens %zu",
          fin->usage.completion_tokens);
    CHECK(fin->timings.total_ns > 0 && fin->timings.time_to_first_token_ns <= fin->timings.total_ns,
          "timings: ttft %llu ns, total %llu ns",
          (unsigned long long)fin->timings.time_to_first_token_ns,
          (unsigned long long)fin->timings.total_ns);
    CHECK(fin->error_message == NULL, "error message on a successful request");
    CHECK_OK(cs_request_free(request));
}

/* Callback state: the callback runs on the engine thread, the test waits on `done`. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t done;
    stream_result result;
    bool keep_going;
} callback_state;

static void callback_state_init(callback_state *state) {
    memset(state, 0, sizeof *state);
    pthread_mutex_init(&state->lock, NULL);
    pthread_cond_init(&state->done, NULL);
    state->keep_going = true;
}

static bool on_event(const cs_event *event, void *user_data) {
    callback_state *state = user_data;
    pthread_mutex_lock(&state->lock);
    record_event(&state->result, event);
    if (event->kind == CS_EVENT_FINISHED) pthread_cond_broadcast(&state->done);
    bool keep_going = state->keep_going;
    pthread_mutex_unlock(&state->lock);
    return keep_going;
}

/* Waits up to 60 s for the FINISHED event; false on timeout. */
static bool wait_finished(callback_state *state) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    pthread_mutex_lock(&state->lock);
    int rc = 0;
    while (!state->result.has_finished && rc == 0)
        rc = pthread_cond_timedwait(&state->done, &state->lock, &deadline);
    bool finished = state->result.has_finished;
    pthread_mutex_unlock(&state->lock);
    return finished;
}

static void test_callback_and_pull_streams_agree(void) {
    static callback_state state;
    callback_state_init(&state);
    cs_sampling_params params = greedy_params((int64_t)COUNT_OF(REF_GREEDY_IDS));
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, on_event, &state, &request));
    if (request == NULL) return;
    CHECK(wait_finished(&state), "callback got no FINISHED event within 60 s");
    const stream_result *pulled = &greedy_reference_run;
    CHECK(state.result.ids_len == pulled->ids_len &&
              memcmp(state.result.ids, pulled->ids, pulled->ids_len * sizeof(uint32_t)) == 0,
          "callback ids differ from pulled ids");
    CHECK(strcmp(state.result.text, pulled->text) == 0, "callback text \"%s\" != pulled \"%s\"",
          state.result.text, pulled->text);
    CHECK(state.result.finished.finish_reason == CS_FINISH_LENGTH, "finish reason %d",
          (int)state.result.finished.finish_reason);

    /* The streamed pieces concatenate to the detokenized ids. */
    char *text = NULL;
    size_t text_len = 0;
    CHECK_OK(cs_engine_detokenize(engine, pulled->ids, pulled->ids_len, &text, &text_len));
    if (text != NULL) {
        CHECK(text_len == pulled->text_len && strcmp(text, pulled->text) == 0,
              "detokenized \"%s\" != streamed \"%s\"", text, pulled->text);
        CHECK_OK(cs_string_free(text));
    }

    /* A callback request has no events to pull. */
    const cs_event *event = NULL;
    CHECK_FAILS(cs_request_next_event(request, 0, &event), CS_INVALID_ARGUMENT, "request");
    CHECK(event == NULL, "out_event written on failure");
    CHECK_OK(cs_request_free(request));
    CHECK(state.result.events_after_finished == 0, "%d events after FINISHED",
          state.result.events_after_finished);
}

static void test_stop_string_and_logprobs(void) {
    const char *stop[] = {"bear"};
    cs_sampling_params params = greedy_params(32);
    params.stop = stop;
    params.stop_len = COUNT_OF(stop);
    params.logprobs = 3;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    stream_result *result = calloc(1, sizeof *result);
    const cs_event *event = NULL;
    /* Check the first token's logprobs while the event is still lent to us. */
    CHECK_OK(cs_request_next_event(request, -1, &event));
    if (event != NULL && event->kind == CS_EVENT_TOKEN) {
        CHECK(event->has_logprobs && event->top_logprobs_len == 3, "logprobs: %d, %zu alternatives",
              (int)event->has_logprobs, event->top_logprobs_len);
        if (event->top_logprobs_len > 0) {
            CHECK(event->top_logprobs[0].token_id == event->token_id,
                  "greedy token %u is not the top alternative %u", event->token_id,
                  event->top_logprobs[0].token_id);
            CHECK(event->logprob <= 0.0f && event->logprob >= event->top_logprobs[2].logprob,
                  "logprob %f, third alternative %f", event->logprob,
                  event->top_logprobs[2].logprob);
        }
        record_event(result, event);
    }
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    /* llama.cpp's greedy text is " with a quick brown bear.\n\n..." */
    CHECK(strcmp(result->text, " with a quick brown ") == 0, "text before the stop string: \"%s\"",
          result->text);
    CHECK(result->finished.finish_reason == CS_FINISH_STOP, "finish reason %d",
          (int)result->finished.finish_reason);
    CHECK(result->finished.stop_kind == CS_STOP_STRING && strcmp(result->stop_string, "bear") == 0 &&
              result->finished.stop_string_len == 4,
          "stop kind %d, stop string \"%s\"", (int)result->finished.stop_kind, result->stop_string);
    CHECK(result->token_events_with_logprobs == (int)result->ids_len,
          "%d of %zu token events had logprobs", result->token_events_with_logprobs, result->ids_len);
    free(result);
    CHECK_OK(cs_request_free(request));
}

/* Runs `params` on the reference prompt to the end; NULL if the submit failed. */
static stream_result *run_to_end(const cs_sampling_params *params);

static void test_stop_token_id_is_reported(void) {
    const uint32_t stop_ids[] = {REF_GREEDY_IDS[2]};
    cs_sampling_params params = greedy_params(16);
    params.stop_token_ids = stop_ids;
    params.stop_token_ids_len = COUNT_OF(stop_ids);
    stream_result *result = run_to_end(&params);
    if (result == NULL) return;
    CHECK(result->ids_len == 3 && result->ids[2] == stop_ids[0], "%zu tokens", result->ids_len);
    CHECK(result->finished.finish_reason == CS_FINISH_STOP, "finish reason %d", (int)result->finished.finish_reason);
    CHECK(result->finished.stop_kind == CS_STOP_TOKEN && result->finished.stop_token_id == stop_ids[0] &&
              result->finished.stop_string == NULL,
          "stop kind %d, token %u", (int)result->finished.stop_kind, result->finished.stop_token_id);
    free(result);
}

/* Runs `params` on the reference prompt to the end; NULL if the submit failed. */
static stream_result *run_to_end(const cs_sampling_params *params) {
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, params, NULL, NULL, &request));
    if (request == NULL) return NULL;
    stream_result *result = calloc(1, sizeof *result);
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK_OK(cs_request_free(request));
    return result;
}

/* What the log callback saw (called on engine threads, hence the lock). */
typedef struct {
    pthread_mutex_t lock;
    int records, malformed, queued, first_token_debug, finished_with_counts;
} log_state;

static void on_log(const cs_log_record *record, void *user_data) {
    log_state *state = user_data;
    pthread_mutex_lock(&state->lock);
    state->records++;
    if (record->struct_size < sizeof(cs_log_record) || record->level < CS_LOG_ERROR ||
        record->level > CS_LOG_TRACE || record->fields_json[0] != '{')
        state->malformed++;
    if (strcmp(record->target, "cortexstream::request") == 0 && strstr(record->fields_json, "\"request_id\":")) {
        if (strcmp(record->message, "queued") == 0) state->queued++;
        if (strcmp(record->message, "first token") == 0 && record->level == CS_LOG_DEBUG)
            state->first_token_debug++;
        if (strcmp(record->message, "finished") == 0 && strstr(record->fields_json, "\"reason\":\"length\"") &&
            strstr(record->fields_json, "\"completion_tokens\":3"))
            state->finished_with_counts++;
    }
    pthread_mutex_unlock(&state->lock);
}

static void test_log_callback_receives_a_requests_records(void) {
    static log_state state = {.lock = PTHREAD_MUTEX_INITIALIZER};
    CHECK_OK(cs_set_log_callback(CS_LOG_DEBUG, on_log, &state));
    cs_sampling_params params = greedy_params(3);
    free(run_to_end(&params));
    /* Records are delivered before the FINISHED event; once this returns no more come. */
    CHECK_OK(cs_set_log_callback(CS_LOG_OFF, NULL, NULL));
    CHECK(state.queued == 1 && state.first_token_debug == 1 && state.finished_with_counts == 1,
          "queued %d, first token %d, finished %d of %d records", state.queued, state.first_token_debug,
          state.finished_with_counts, state.records);
    CHECK(state.malformed == 0, "%d malformed records", state.malformed);
    int before = state.records;
    free(run_to_end(&params));
    CHECK(state.records == before, "%d records after the callback was removed", state.records - before);
    CHECK_FAILS(cs_set_log_callback(9, on_log, &state), CS_INVALID_ARGUMENT, "level");
    CHECK_FAILS(cs_set_log_callback(-1, NULL, NULL), CS_INVALID_ARGUMENT, "level");
}

/* Runs `prompt` greedily for `max_tokens` on `on` (any engine), pulled, into a new result. */
static stream_result *run_on(cs_engine *on, const char *prompt, int64_t max_tokens, const char *tag) {
    cs_sampling_params params = greedy_params(max_tokens);
    params.ignore_eos = true;
    params.tag = tag;
    stream_result *result = calloc(1, sizeof *result);
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(on, prompt, &params, NULL, NULL, &request));
    if (request == NULL) return result;
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK_OK(cs_request_free(request));
    return result;
}

static bool listed_as_loaded(const cs_registry *registry, const char *name, size_t *active_requests) {
    cs_loaded_models *loaded = NULL;
    CHECK_OK(cs_registry_loaded(registry, &loaded));
    size_t len = 0;
    if (loaded != NULL) CHECK_OK(cs_loaded_models_len(loaded, &len));
    bool found = false;
    for (size_t i = 0; i < len; i++) {
        cs_loaded_model model = {.struct_size = sizeof model};
        CHECK_OK(cs_loaded_models_get(loaded, i, &model));
        if (model.name == NULL || strcmp(model.name, name) != 0) continue;
        found = true;
        if (active_requests != NULL) *active_requests = model.active_requests;
        CHECK(model.memory_bytes > 0, "%s: memory_bytes 0", name);
    }
    cs_loaded_models_free(loaded);
    return found;
}

/* An embedding-only model from the registry embeds from C (cs_lease_embed), as the engine's
 * own MiniLM does, with the same buffer checks. */
static void check_lease_embeds_like_the_engine(const cs_lease *lease) {
    const char *texts[] = {"A cat sits on the mat.", "The stock market fell sharply today."};
    enum { DIM = 384, N = 2 };
    size_t dim = 0;
    CHECK_OK(cs_lease_embedding_dim(lease, &dim));
    CHECK(dim == DIM, "cs_lease_embedding_dim %zu", dim);
    float from_lease[N * DIM], from_engine[N * DIM];
    dim = 0;
    CHECK_OK(cs_lease_embed(lease, texts, N, from_lease, N * DIM, &dim));
    CHECK(dim == DIM, "cs_lease_embed dim %zu", dim);
    CHECK_OK(cs_engine_embed(engine, texts, N, from_engine, N * DIM, &dim));
    double worst = 0.0;
    for (size_t i = 0; i < N * DIM; i++) worst = fmax(worst, fabs((double)from_lease[i] - from_engine[i]));
    CHECK(worst < 1e-5, "lease and engine vectors differ by %g", worst);

    size_t untouched_dim = 7;
    CHECK_FAILS(cs_lease_embed(lease, texts, N, from_lease, N * DIM - 1, &untouched_dim), CS_INVALID_ARGUMENT,
                "out_vectors");
    CHECK(strstr(cs_last_error_message(), "768") != NULL, "message does not state the size: %s",
          cs_last_error_message());
    CHECK(untouched_dim == 7, "out_dim written by a failing call");
    CHECK_FAILS(cs_lease_embed(NULL, texts, N, from_lease, N * DIM, &dim), CS_INVALID_ARGUMENT, "lease");
    CHECK_FAILS(cs_lease_embed(lease, NULL, N, from_lease, N * DIM, &dim), CS_INVALID_ARGUMENT, "texts");
    CHECK_FAILS(cs_lease_embed(lease, texts, N, from_lease, N * DIM, NULL), CS_INVALID_ARGUMENT, "out_dim");
    CHECK_FAILS(cs_lease_embedding_dim(lease, NULL), CS_INVALID_ARGUMENT, "out_dim");
}

/* cs_loaded_model can grow (issue 22): a caller built against an older, shorter struct gets the
 * fields it knows and nothing is written past its struct_size; bad sizes and indexes are refused
 * naming the argument. */
static void check_loaded_list_is_growable(const cs_registry *registry) {
    cs_loaded_models *loaded = NULL;
    CHECK_OK(cs_registry_loaded(registry, &loaded));
    if (loaded == NULL) return;
    size_t len = 0;
    CHECK_OK(cs_loaded_models_len(loaded, &len));
    CHECK(len == 1, "%zu models loaded, expected only minilm", len);

    cs_loaded_model full = {.struct_size = sizeof full};
    CHECK_OK(cs_loaded_models_get(loaded, 0, &full));
    CHECK(full.struct_size == sizeof full, "struct_size rewritten to %zu", full.struct_size);
    CHECK(full.name != NULL && strcmp(full.name, "minilm") == 0 && full.is_embedding && full.memory_bytes > 0,
          "entry: %s embedding=%d bytes=%llu", full.name ? full.name : "(null)", full.is_embedding,
          (unsigned long long)full.memory_bytes);

    /* An "older" caller whose struct ends after `is_embedding`: the rest keeps its bytes. */
    const size_t older_size = offsetof(cs_loaded_model, is_embedding) + sizeof(bool);
    cs_loaded_model older;
    memset(&older, 0xAB, sizeof older);
    older.struct_size = older_size;
    CHECK_OK(cs_loaded_models_get(loaded, 0, &older));
    CHECK(older.struct_size == older_size, "the caller's struct_size became %zu", older.struct_size);
    CHECK(older.name == full.name && older.is_embedding, "older struct did not get the fields it knows");
    const unsigned char *tail = (const unsigned char *)&older + older_size;
    for (size_t i = 0; i < sizeof older - older_size; i++)
        CHECK(tail[i] == 0xAB, "byte %zu past the caller's struct_size was written", older_size + i);

    cs_loaded_model untouched = {.struct_size = sizeof untouched, .memory_bytes = 42};
    CHECK_FAILS(cs_loaded_models_get(loaded, len, &untouched), CS_INVALID_ARGUMENT, "index");
    CHECK(untouched.memory_bytes == 42, "out_model written by a failing call");
    untouched.struct_size = sizeof untouched + 8;
    CHECK_FAILS(cs_loaded_models_get(loaded, 0, &untouched), CS_INVALID_ARGUMENT, "out_model");
    untouched.struct_size = 0;
    CHECK_FAILS(cs_loaded_models_get(loaded, 0, &untouched), CS_INVALID_ARGUMENT, "out_model");
    CHECK_FAILS(cs_loaded_models_get(loaded, 0, NULL), CS_INVALID_ARGUMENT, "out_model");
    CHECK_FAILS(cs_loaded_models_get(NULL, 0, &full), CS_INVALID_ARGUMENT, "models");
    CHECK_FAILS(cs_loaded_models_len(NULL, &len), CS_INVALID_ARGUMENT, "models");
    CHECK_FAILS(cs_loaded_models_len(loaded, NULL), CS_INVALID_ARGUMENT, "out_len");
    cs_loaded_models_free(loaded);
    cs_loaded_models_free(NULL);
}

/* MiniLM alone in a registry (issue 22 leftovers): it embeds through its lease, and the list of
 * loaded models is read through the growable accessors. */
static void test_registry_embedding_model_and_loaded_list(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_registry *registry = NULL;
    CHECK_OK(cs_registry_new(NULL, &registry));
    if (registry == NULL) return;
    CHECK_OK(cs_registry_register_embedding(registry, "minilm", minilm, 1, NULL));
    cs_lease *lease = NULL;
    CHECK_OK(cs_registry_get(registry, "minilm", NULL, &lease));
    if (lease != NULL) {
        check_lease_embeds_like_the_engine(lease);
        check_loaded_list_is_growable(registry);
        CHECK_OK(cs_registry_release(lease));
    }
    CHECK_OK(cs_registry_free(registry));
}

/* The registry (issue 22): SmolLM2 under two names with their own settings plus MiniLM,
 * requests to both interleaved, keep-alive 0, unknown names, the lent engine's ownership. */
static void test_registry_serves_models_by_name(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_registry *registry = NULL;
    CHECK_OK(cs_registry_new(NULL, &registry));
    if (registry == NULL) return;
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;
    params.kv_cache_tokens = 512;
    params.max_running = 2;
    params.threads = 1;
    params.context_length = 256;
    CHECK_OK(cs_registry_register(registry, "small", &params, NULL));
    params.context_length = 0;
    CHECK_OK(cs_registry_register(registry, "large", &params, "5m"));
    CHECK_OK(cs_registry_register_embedding(registry, "minilm", minilm, 1, NULL));
    CHECK_FAILS(cs_registry_register(registry, "small", &params, NULL), CS_INVALID_ARGUMENT, "name");
    params.max_running = 0;
    CHECK_FAILS(cs_registry_register(registry, "bad", &params, NULL), CS_INVALID_ARGUMENT, "max_running");
    params.max_running = 2;
    CHECK_FAILS(cs_registry_register(registry, "bad", &params, "soon"), CS_INVALID_ARGUMENT, "keep_alive");

    cs_lease *small = NULL, *large = NULL, *embedder = NULL;
    CHECK_OK(cs_registry_get(registry, "small", NULL, &small));
    CHECK_OK(cs_registry_get(registry, "large", NULL, &large));
    CHECK_OK(cs_registry_get(registry, "minilm", NULL, &embedder));
    cs_engine *small_engine = NULL, *large_engine = NULL, *none = NULL;
    CHECK_OK(cs_lease_engine(small, &small_engine));
    CHECK_OK(cs_lease_engine(large, &large_engine));
    CHECK_FAILS(cs_lease_engine(embedder, &none), CS_INVALID_ARGUMENT, "lease");
    CHECK(none == NULL, "out_engine written on failure");
    {
        const char *text = "no embedder";
        float vector[384];
        size_t dim = 7;
        CHECK_FAILS(cs_lease_embedding_dim(small, &dim), CS_NO_EMBEDDING_MODEL, NULL);
        CHECK_FAILS(cs_lease_embed(small, &text, 1, vector, 384, &dim), CS_NO_EMBEDDING_MODEL, NULL);
        CHECK(dim == 7, "out_dim written by a failing call");
    }
    if (small_engine != NULL && large_engine != NULL) {
        cs_model_info info = {.struct_size = sizeof info};
        CHECK_OK(cs_engine_model_info(small_engine, &info));
        CHECK(info.context_length == 256, "small: context_length %zu", info.context_length);
        CHECK_OK(cs_engine_model_info(large_engine, &info));
        CHECK(info.context_length == 512, "large: context_length %zu (capped by its KV cache)", info.context_length);
        /* Interleaved: both engines run at once, each on its own step loop. */
        cs_sampling_params greedy = greedy_params(6);
        greedy.ignore_eos = true;
        cs_request *a = NULL, *b = NULL;
        CHECK_OK(cs_engine_submit_text(small_engine, "The capital of France is", &greedy, NULL, NULL, &a));
        CHECK_OK(cs_engine_submit_text(large_engine, "The capital of France is", &greedy, NULL, NULL, &b));
        stream_result *ra = calloc(1, sizeof *ra), *rb = calloc(1, sizeof *rb);
        if (a != NULL) CHECK_FAILS(drain(a, ra), CS_END_OF_STREAM, NULL);
        if (b != NULL) CHECK_FAILS(drain(b, rb), CS_END_OF_STREAM, NULL);
        CHECK(ra->ids_len == 6 && strcmp(ra->text, rb->text) == 0, "small gave \"%s\", large \"%s\"", ra->text, rb->text);
        free(ra);
        free(rb);
        CHECK_OK(cs_request_free(a));
        CHECK_OK(cs_request_free(b));
        CHECK_FAILS(cs_engine_free(small_engine), CS_INVALID_ARGUMENT, "engine");
    }
    size_t active = 0;
    CHECK(listed_as_loaded(registry, "small", &active) && active == 1, "small not listed with one lease");
    CHECK(listed_as_loaded(registry, "minilm", NULL), "minilm not listed");
    CHECK_OK(cs_registry_release(small));
    CHECK_OK(cs_registry_release(large));
    CHECK_OK(cs_registry_release(embedder));
    CHECK(listed_as_loaded(registry, "small", &active) && active == 0, "small unloaded by its release");

    /* Keep-alive 0: unloaded as soon as its last lease ends. */
    cs_lease *once = NULL;
    CHECK_OK(cs_registry_get(registry, "large", "0", &once));
    CHECK(listed_as_loaded(registry, "large", NULL), "large not loaded while leased");
    CHECK_OK(cs_registry_release(once));
    CHECK(!listed_as_loaded(registry, "large", NULL), "large still loaded after keep-alive 0");

    bool was_loaded = false;
    CHECK_OK(cs_registry_unload(registry, "small", &was_loaded));
    CHECK(was_loaded, "small was not loaded");
    CHECK_OK(cs_registry_unload(registry, "small", &was_loaded));
    CHECK(!was_loaded, "small unloaded twice");

    cs_lease *missing = NULL;
    CHECK_FAILS(cs_registry_get(registry, "gpt-4", NULL, &missing), CS_MODEL_NOT_FOUND, NULL);
    CHECK(strstr(cs_last_error_message(), "gpt-4") != NULL && strstr(cs_last_error_message(), "large, minilm, small"),
          "message: %s", cs_last_error_message());
    CHECK(missing == NULL, "out_lease written on failure");
    CHECK_FAILS(cs_registry_unload(registry, "gpt-4", &was_loaded), CS_MODEL_NOT_FOUND, NULL);
    CHECK_FAILS(cs_registry_get(NULL, "small", NULL, &missing), CS_INVALID_ARGUMENT, "registry");
    CHECK_FAILS(cs_registry_get(registry, NULL, NULL, &missing), CS_INVALID_ARGUMENT, "name");
    CHECK_FAILS(cs_registry_release(NULL), CS_INVALID_ARGUMENT, "lease");

    /* A lease outlives its registry. */
    cs_lease *kept = NULL;
    CHECK_OK(cs_registry_get(registry, "small", NULL, &kept));
    CHECK_OK(cs_registry_free(registry));
    cs_engine *kept_engine = NULL;
    CHECK_OK(cs_lease_engine(kept, &kept_engine));
    if (kept_engine != NULL) {
        stream_result *result = run_on(kept_engine, "Hello", 2, NULL);
        CHECK(result->ids_len == 2, "%zu tokens after the registry was freed", result->ids_len);
        free(result);
    }
    CHECK_OK(cs_registry_release(kept));
}

/* What the log callback saw of the requests tagged by test_log_prompts_and_tags. */
typedef struct {
    pthread_mutex_t lock;
    int quiet_queued, quiet_with_prompt, logged_queued, logged_with_prompt;
} prompt_log_state;

static void on_prompt_log(const cs_log_record *record, void *user_data) {
    prompt_log_state *state = user_data;
    if (strcmp(record->message, "queued") != 0) return;
    bool has_prompt = strstr(record->fields_json, "\"prompt\":\"The secret ingredient is\"") != NULL;
    pthread_mutex_lock(&state->lock);
    if (strstr(record->fields_json, "\"tag\":\"c-quiet\"")) {
        state->quiet_queued++;
        state->quiet_with_prompt += has_prompt;
    }
    if (strstr(record->fields_json, "\"tag\":\"c-logged\"")) {
        state->logged_queued++;
        state->logged_with_prompt += has_prompt;
    }
    pthread_mutex_unlock(&state->lock);
}

/* Issue 22 item 5 in C: `cs_sampling_params.tag` reaches the request's records, and the
 * prompt is in them only from an engine built with `log_prompts` (here by a registry). */
static void test_log_prompts_and_tags(void) {
    static prompt_log_state state = {.lock = PTHREAD_MUTEX_INITIALIZER};
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_registry *registry = NULL;
    CHECK_OK(cs_registry_new(NULL, &registry));
    if (registry == NULL) return;
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;
    params.kv_cache_tokens = 256;
    params.max_running = 1;
    params.threads = 1;
    params.log_prompts = true;
    CHECK_OK(cs_registry_register(registry, "logged", &params, NULL));
    cs_lease *lease = NULL;
    CHECK_OK(cs_registry_get(registry, "logged", NULL, &lease));
    cs_engine *logged = NULL;
    CHECK_OK(cs_lease_engine(lease, &logged));
    CHECK_OK(cs_set_log_callback(CS_LOG_INFO, on_prompt_log, &state));
    free(run_on(engine, "The secret ingredient is", 1, "c-quiet"));
    if (logged != NULL) free(run_on(logged, "The secret ingredient is", 1, "c-logged"));
    CHECK_OK(cs_set_log_callback(CS_LOG_OFF, NULL, NULL));
    CHECK(state.quiet_queued == 1 && state.quiet_with_prompt == 0, "quiet: %d queued, %d with the prompt",
          state.quiet_queued, state.quiet_with_prompt);
    CHECK(state.logged_queued == 1 && state.logged_with_prompt == 1, "logged: %d queued, %d with the prompt",
          state.logged_queued, state.logged_with_prompt);
    CHECK_OK(cs_registry_release(lease));
    CHECK_OK(cs_registry_free(registry));
    cs_sampling_params bad = greedy_params(1);
    bad.tag = "\xff";
    cs_request *request = NULL;
    CHECK_FAILS(cs_engine_submit_text(engine, "Hi", &bad, NULL, NULL, &request), CS_INVALID_ARGUMENT, "tag");
}

static void test_constrained_output_and_bad_constraints(void) {
    cs_sampling_params params = greedy_params(16);
    params.temperature = 1.0f;
    params.seed = 11;
    params.constraint_kind = CS_CONSTRAINT_CHOICES;
    params.constraint = "[\"yes\", \"no\"]";
    stream_result *result = run_to_end(&params);
    if (result != NULL) {
        CHECK(strcmp(result->text, "yes") == 0 || strcmp(result->text, "no") == 0, "choice: \"%s\"", result->text);
        CHECK(result->finished.finish_reason == CS_FINISH_STOP, "finish reason %d", (int)result->finished.finish_reason);
        CHECK(result->finished.stop_kind == CS_STOP_GRAMMAR, "stop kind %d", (int)result->finished.stop_kind);
        free(result);
    }
    params.constraint_kind = CS_CONSTRAINT_JSON_SCHEMA;
    params.constraint = "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 0, "
                        "\"maximum\": 9}}, \"required\": [\"n\"], \"additionalProperties\": false}";
    result = run_to_end(&params);
    if (result != NULL) {
        int n = -1;
        char end = 0;
        CHECK(sscanf(result->text, "{\"n\":%d%c", &n, &end) == 2 && end == '}' && n >= 0 && n <= 9 &&
                  strchr(result->text, '}') == result->text + result->text_len - 1,
              "schema output: \"%s\"", result->text);
        CHECK(result->finished.finish_reason == CS_FINISH_STOP, "finish reason %d", (int)result->finished.finish_reason);
        free(result);
    }

    cs_request *request = NULL;
    params.constraint_kind = CS_CONSTRAINT_REGEX;
    params.constraint = "(unclosed";
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT, "regex");
    params.constraint = NULL;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "constraint");
    params.constraint_kind = 9;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "constraint_kind");
    CHECK(request == NULL, "a refused submit returned a request");
}

/* Tool calling: `tools` + `tool_choice` in the params, a tool history as JSON, the calls as
 * JSON on the FINISHED event. SmolLM2's template has no tool syntax (generic JSON form); a
 * required choice constrains the answer to a call whose arguments fit the schema. */
static void test_tool_calls_and_bad_tools(void) {
    static const char *tools =
        "[{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"parameters\": "
        "{\"type\": \"object\", \"properties\": {\"hours\": {\"type\": \"integer\", \"minimum\": 0, "
        "\"maximum\": 9}}, \"required\": [\"hours\"], \"additionalProperties\": false}}}]";
    static const char *history =
        "[{\"role\": \"user\", \"content\": \"What time is it?\"},"
        " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"abc123def\", \"type\": "
        "\"function\", \"function\": {\"name\": \"get_time\", \"arguments\": \"{\\\"hours\\\": 3}\"}}]},"
        " {\"role\": \"tool\", \"tool_call_id\": \"abc123def\", \"content\": \"3 o'clock\"},"
        " {\"role\": \"user\", \"content\": \"And now?\"}]";
    cs_sampling_params params = greedy_params(60);
    params.tools = tools;
    params.tool_choice = "required";
    params.parallel_tool_calls = 0;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_chat_json(engine, history, &params, NULL, NULL, &request));
    char text[256] = "", calls[512] = "";
    cs_finish_reason reason = CS_FINISH_NONE;
    for (const cs_event *event = NULL; request != NULL && cs_request_next_event(request, -1, &event) == CS_OK;) {
        if (strlen(text) + event->text_len < sizeof text) strncat(text, event->text, event->text_len);
        if (event->kind == CS_EVENT_FINISHED) {
            reason = event->finish_reason;
            CHECK(event->tool_calls != NULL && event->tool_calls_len < sizeof calls, "no tool_calls JSON");
            if (event->tool_calls != NULL && event->tool_calls_len < sizeof calls) {
                memcpy(calls, event->tool_calls, event->tool_calls_len + 1);
            }
        }
    }
    if (request != NULL) CHECK_OK(cs_request_free(request));
    CHECK(reason == CS_FINISH_STOP, "finish reason %d", (int)reason);
    CHECK(text[0] == '\0', "call syntax leaked as text: \"%s\"", text);
    int hours = -1;
    const char *arguments = strstr(calls, "\"arguments\":\"{\\\"hours\\\":");
    CHECK(strstr(calls, "\"name\":\"get_time\"") != NULL && arguments != NULL &&
              sscanf(arguments, "\"arguments\":\"{\\\"hours\\\":%d", &hours) == 1 && hours >= 0 && hours <= 9,
          "calls: %s", calls);

    /* Without tools the FINISHED event has no tool_calls. */
    params = greedy_params(2);
    stream_result *plain = run_to_end(&params);
    if (plain != NULL) {
        CHECK(plain->finished.tool_calls == NULL && plain->finished.tool_calls_len == 0, "tool_calls on a plain request");
        free(plain);
    }

    params = greedy_params(4);
    request = NULL;
    params.tools = "[{\"type\": \"function\", \"function\": {\"description\": \"no name\"}}]";
    CHECK_FAILS(cs_engine_submit_chat_json(engine, history, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT, "tools");
    CHECK(strstr(cs_last_error_message(), "tools[0].function.name") != NULL, "%s", cs_last_error_message());
    params.tools = tools;
    params.tool_choice = "{\"type\": \"function\", \"function\": {\"name\": \"nope\"}}";
    CHECK_FAILS(cs_engine_submit_chat_json(engine, history, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "tool_choice");
    params.tool_choice = NULL;
    params.parallel_tool_calls = 2;
    CHECK_FAILS(cs_engine_submit_chat_json(engine, history, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "parallel_tool_calls");
    params.parallel_tool_calls = -1;
    CHECK_FAILS(cs_engine_submit_chat_json(engine, "[{\"role\": \"tool\", \"content\": \"x\"}]", &params, NULL, NULL,
                                           &request),
                CS_INVALID_ARGUMENT, "messages");
    CHECK(strstr(cs_last_error_message(), "tool_call_id") != NULL, "%s", cs_last_error_message());
    CHECK_FAILS(cs_engine_submit_chat_json(engine, "{not json", &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "messages");
    CHECK(request == NULL, "a refused submit returned a request");
}

/* Cancels `request` from its own thread once the puller has seen `after_tokens` tokens. */
typedef struct {
    cs_request *request;
    atomic_size_t tokens_seen;
    size_t after_tokens;
    cs_status status;
    cs_metrics at_cancel; /* read right after cs_request_cancel returned */
} canceller;

static void *cancel_when_started(void *arg) {
    canceller *c = arg;
    if (!wait_for_count(&c->tokens_seen, c->after_tokens)) return NULL;
    c->status = cs_request_cancel(c->request);
    c->at_cancel.struct_size = sizeof c->at_cancel;
    if (c->status == CS_OK) c->status = cs_engine_metrics(engine, &c->at_cancel);
    return NULL;
}

static void test_cancel_from_another_thread(void) {
    cs_sampling_params params = greedy_params(400);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    canceller c = {.request = request, .after_tokens = 3, .status = CS_INTERNAL};
    pthread_t thread;
    pthread_create(&thread, NULL, cancel_when_started, &c);
    stream_result *result = calloc(1, sizeof *result);
    for (;;) {
        const cs_event *event = NULL;
        cs_status status = cs_request_next_event(request, -1, &event);
        if (status != CS_OK) break;
        record_event(result, event);
        atomic_store(&c.tokens_seen, result->ids_len);
    }
    atomic_store(&c.tokens_seen, SIZE_MAX); /* releases the canceller if the stream ended early */
    pthread_join(thread, NULL);
    CHECK(c.status == CS_OK, "cs_request_cancel returned %d", (int)c.status);
    CHECK(result->finished.finish_reason == CS_FINISH_CANCELLED, "finish reason %d",
          (int)result->finished.finish_reason);
    CHECK(result->ids_len >= 3 && result->ids_len < 400, "%zu tokens before the cancel took effect",
          result->ids_len);
    /* Nothing else runs: every step after the cancel returned is counted once idle. */
    cs_metrics after;
    CHECK(wait_idle(engine, &after), "the engine kept running after the cancel");
    CHECK(c.status != CS_OK || after.steps - c.at_cancel.steps <= 1, "%llu steps ran after the cancel returned",
          (unsigned long long)(after.steps - c.at_cancel.steps));
    CHECK(result->finished.usage.completion_tokens == result->ids_len,
          "usage says %zu tokens, %zu were streamed", result->finished.usage.completion_tokens,
          result->ids_len);
    CHECK_OK(cs_request_cancel(request)); /* idempotent, also after the end */
    free(result);
    CHECK_OK(cs_request_free(request));
}

static void test_free_running_request_cancels_it(void) {
    static callback_state state;
    callback_state_init(&state);
    cs_sampling_params params = greedy_params(400);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, on_event, &state, &request));
    if (request == NULL) return;
    CHECK_OK(cs_request_free(request));
    uint64_t steps_at_free = metrics_of(engine).steps;
    CHECK(wait_finished(&state), "no FINISHED event within 60 s of freeing the request");
    CHECK(state.result.finished.finish_reason == CS_FINISH_CANCELLED, "finish reason %d",
          (int)state.result.finished.finish_reason);
    cs_metrics after;
    CHECK(wait_idle(engine, &after), "the engine kept running after the free");
    CHECK(after.steps - steps_at_free <= 1, "%llu steps ran after cs_request_free returned",
          (unsigned long long)(after.steps - steps_at_free));
}

static void test_callback_returning_false_cancels(void) {
    static callback_state state;
    callback_state_init(&state);
    state.keep_going = false;
    cs_sampling_params params = greedy_params(400);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, on_event, &state, &request));
    if (request == NULL) return;
    CHECK(wait_finished(&state), "no FINISHED event within 60 s");
    CHECK(state.result.finished.finish_reason == CS_FINISH_CANCELLED, "finish reason %d",
          (int)state.result.finished.finish_reason);
    CHECK(state.result.ids_len <= 2, "%zu tokens after the callback asked to stop",
          state.result.ids_len);
    CHECK_OK(cs_request_free(request));
}

static void test_bad_arguments_are_reported(void) {
    cs_sampling_params params = greedy_params(4);
    cs_request *const untouched = (cs_request *)&params; /* any non-NULL marker */
    cs_request *request = untouched;

    CHECK_FAILS(cs_engine_submit_text(NULL, REF_PROMPT, &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_submit_text(engine, NULL, &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "prompt");
    CHECK_FAILS(cs_engine_submit_text(engine, "caf\xc3\x28", &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "prompt");
    CHECK(strstr(cs_last_error_message(), "UTF-8") != NULL, "message: %s", cs_last_error_message());
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, NULL, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "params");
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, NULL),
                CS_INVALID_ARGUMENT, "out_request");

    cs_sampling_params bad = params;
    bad.temperature = -1.0f;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "temperature");
    bad = params;
    bad.temperature = NAN;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "temperature");
    bad = params;
    bad.top_p = 0.0f;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "top_p");
    bad = params;
    bad.top_k = -1;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "top_k");
    bad = params;
    bad.max_tokens = 0;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "max_tokens");
    bad = params;
    bad.logprobs = 21;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "logprobs");
    const char *stop_with_null[] = {"ok", NULL};
    bad = params;
    bad.stop = stop_with_null;
    bad.stop_len = 2;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "stop");
    bad = params;
    bad.stop = NULL;
    bad.stop_len = 1;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "stop");
    bad = params;
    bad.struct_size = sizeof bad + 8; /* a caller built against a newer header */
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &bad, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "params");

    cs_chat_message no_role = {NULL, "hi"};
    CHECK_FAILS(cs_engine_submit_chat(engine, &no_role, 1, &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "messages");
    CHECK(strstr(cs_last_error_message(), "messages[0].role") != NULL, "message: %s",
          cs_last_error_message());
    CHECK_FAILS(cs_engine_submit_tokens(engine, NULL, 3, &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, "tokens");
    uint32_t out_of_vocab = 49152;
    CHECK_FAILS(cs_engine_submit_tokens(engine, &out_of_vocab, 1, &params, NULL, NULL, &request),
                CS_INVALID_ARGUMENT, NULL);
    CHECK(request == untouched, "out_request was written by a failing call");

    /* Frees and handles. */
    CHECK_FAILS(cs_request_free(NULL), CS_INVALID_ARGUMENT, "request");
    CHECK_FAILS(cs_engine_free(NULL), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_string_free(NULL), CS_INVALID_ARGUMENT, "text");
    CHECK_FAILS(cs_tokens_free(NULL), CS_INVALID_ARGUMENT, "tokens");
    CHECK_FAILS(cs_request_cancel(NULL), CS_INVALID_ARGUMENT, "request");
    const cs_event *event = NULL;
    CHECK_FAILS(cs_request_next_event(NULL, 0, &event), CS_INVALID_ARGUMENT, "request");

    cs_engine_params engine_params = cs_engine_default_params();
    cs_engine *no_engine = NULL;
    CHECK_FAILS(cs_engine_new(&engine_params, &no_engine), CS_INVALID_ARGUMENT, "model_path");
    engine_params.model_path = "/nonexistent/model.gguf";
    cs_status status = cs_engine_new(&engine_params, &no_engine);
    CHECK(status == CS_MODEL_LOAD || status == CS_IO, "missing model file gave %d: %s",
          (int)status, cs_last_error_message());
    CHECK(strstr(cs_last_error_message(), "/nonexistent/model.gguf") != NULL,
          "message does not name the file: %s", cs_last_error_message());
    CHECK(no_engine == NULL, "out_engine was written by a failing call");

    /* An out-struct must say how much room it has. */
    cs_model_info info = {.struct_size = 0};
    CHECK_FAILS(cs_engine_model_info(engine, &info), CS_INVALID_ARGUMENT, "out_info");
}

static void test_prompt_longer_than_context(void) {
    cs_model_info info = {.struct_size = sizeof info};
    CHECK_OK(cs_engine_model_info(engine, &info));
    size_t len = info.context_length + 1;
    uint32_t *tokens = malloc(len * sizeof *tokens);
    for (size_t i = 0; i < len; i++) tokens[i] = REF_PROMPT_IDS[i % COUNT_OF(REF_PROMPT_IDS)];
    cs_sampling_params params = greedy_params(4);
    cs_request *request = NULL;
    CHECK_FAILS(cs_engine_submit_tokens(engine, tokens, len, &params, NULL, NULL, &request),
                CS_CONTEXT_LENGTH_EXCEEDED, NULL);
    char expected[32];
    snprintf(expected, sizeof expected, "%zu", len);
    CHECK(strstr(cs_last_error_message(), expected) != NULL, "message does not state %zu: %s",
          len, cs_last_error_message());
    free(tokens);
}

static void test_tokenize_detokenize_round_trip(void) {
    uint32_t *tokens = NULL;
    size_t len = 0;
    CHECK_OK(cs_engine_tokenize(engine, REF_TOKENIZATION_TEXT, false, &tokens, &len));
    if (tokens == NULL) return;
    CHECK(len == COUNT_OF(REF_TOKENIZATION_IDS) &&
              memcmp(tokens, REF_TOKENIZATION_IDS, sizeof REF_TOKENIZATION_IDS) == 0,
          "%zu ids differ from llama.cpp's %zu", len, COUNT_OF(REF_TOKENIZATION_IDS));
    char *text = NULL;
    size_t text_len = 0;
    CHECK_OK(cs_engine_detokenize(engine, tokens, len, &text, &text_len));
    if (text != NULL) {
        CHECK(text_len == strlen(REF_TOKENIZATION_TEXT) && strcmp(text, REF_TOKENIZATION_TEXT) == 0,
              "round trip gave \"%s\"", text);
        CHECK_OK(cs_string_free(text));
    }
    CHECK_OK(cs_tokens_free(tokens));

    CHECK_FAILS(cs_engine_tokenize(engine, "\xff", false, &tokens, &len), CS_INVALID_ARGUMENT, "text");
    CHECK_FAILS(cs_engine_tokenize(engine, "x", false, NULL, &len), CS_INVALID_ARGUMENT, "out_tokens");
}

static void test_chat_template_matches_llama_cpp(void) {
    cs_chat_message message = {REF_CHAT_ROLE, REF_CHAT_CONTENT};
    char *text = NULL;
    size_t len = 0;
    CHECK_OK(cs_engine_apply_chat_template(engine, &message, 1, true, &text, &len));
    if (text == NULL) return;
    CHECK(strcmp(text, REF_CHAT_RENDERED) == 0, "rendered:\n%s", text);
    CHECK(len == strlen(REF_CHAT_RENDERED), "length %zu", len);
    CHECK_OK(cs_string_free(text));
}

static double dot(const float *a, const float *b, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (double)a[i] * b[i];
    return sum;
}

static void test_embeddings(void) {
    const char *texts[] = {"A cat sits on the mat.", "A kitten is sitting on a rug.",
                           "The stock market fell sharply today."};
    enum { DIM = 384, N = 3 };
    float vectors[N * DIM];
    size_t dim = 0;
    CHECK_OK(cs_engine_embed(engine, texts, N, vectors, N * DIM, &dim));
    CHECK(dim == DIM, "dim %zu", dim);
    for (int i = 0; i < N; i++) {
        double norm = sqrt(dot(vectors + i * DIM, vectors + i * DIM, DIM));
        CHECK(fabs(norm - 1.0) < 1e-4, "vector %d has norm %f", i, norm);
    }
    double similar = dot(vectors, vectors + DIM, DIM);
    double unrelated = dot(vectors, vectors + 2 * DIM, DIM);
    CHECK(similar > unrelated + 0.3, "cos(cat, kitten) %f vs cos(cat, stocks) %f", similar, unrelated);

    size_t untouched_dim = 7;
    CHECK_FAILS(cs_engine_embed(engine, texts, N, vectors, N * DIM - 1, &untouched_dim),
                CS_INVALID_ARGUMENT, "out_vectors");
    CHECK(strstr(cs_last_error_message(), "1152") != NULL, "message does not state the size: %s",
          cs_last_error_message());
    CHECK(untouched_dim == 7, "out_dim written by a failing call");
    const char *with_null[] = {"ok", NULL};
    CHECK_FAILS(cs_engine_embed(engine, with_null, 2, vectors, N * DIM, &dim), CS_INVALID_ARGUMENT,
                "texts");
}

/* Counts FINISHED events of several callback requests. */
typedef struct {
    atomic_size_t tokens;
    atomic_int cancelled;
    atomic_int finished;
} fleet;

static bool on_fleet_event(const cs_event *event, void *user_data) {
    fleet *f = user_data;
    if (event->kind == CS_EVENT_TOKEN) {
        atomic_fetch_add(&f->tokens, 1);
    } else {
        atomic_fetch_add(&f->finished, 1);
        if (event->finish_reason == CS_FINISH_CANCELLED) atomic_fetch_add(&f->cancelled, 1);
    }
    return true;
}

static void test_engine_free_with_requests_in_flight(void) {
    cs_engine *doomed = new_engine(false);
    if (doomed == NULL) return;
    enum { CALLBACK_REQUESTS = 3 };
    static fleet f;
    cs_sampling_params params = greedy_params(2000);
    params.ignore_eos = true;
    cs_request *requests[CALLBACK_REQUESTS + 1] = {NULL};
    for (int i = 0; i < CALLBACK_REQUESTS; i++)
        CHECK_OK(cs_engine_submit_text(doomed, REF_PROMPT, &params, on_fleet_event, &f, &requests[i]));
    cs_request *pulled = NULL;
    CHECK_OK(cs_engine_submit_text(doomed, REF_PROMPT, &params, NULL, NULL, &pulled));
    requests[CALLBACK_REQUESTS] = pulled;
    CHECK(wait_for_count(&f.tokens, 2 * CALLBACK_REQUESTS), "requests did not start within 60 s");

    /* A second engine without embeddings says so. */
    float vector[384];
    size_t dim = 0;
    const char *text = "x";
    CHECK_FAILS(cs_engine_embed(doomed, &text, 1, vector, 384, &dim), CS_NO_EMBEDDING_MODEL, NULL);

    CHECK_OK(cs_engine_free(doomed));
    /* The engine thread has joined, so every callback has had its FINISHED event. */
    CHECK(atomic_load(&f.finished) == CALLBACK_REQUESTS, "%d of %d callbacks finished",
          atomic_load(&f.finished), CALLBACK_REQUESTS);
    CHECK(atomic_load(&f.cancelled) == CALLBACK_REQUESTS, "%d of %d were cancelled",
          atomic_load(&f.cancelled), CALLBACK_REQUESTS);
    if (pulled != NULL) {
        stream_result *result = calloc(1, sizeof *result);
        CHECK_FAILS(drain(pulled, result), CS_END_OF_STREAM, NULL);
        CHECK(result->finished.finish_reason == CS_FINISH_CANCELLED, "pulled request ended with %d",
              (int)result->finished.finish_reason);
        free(result);
    }
    for (int i = 0; i <= CALLBACK_REQUESTS; i++)
        if (requests[i] != NULL) CHECK_OK(cs_request_free(requests[i]));
}

/* ---------- internal errors, fault hooks, bool fields ---------- */

/* Test-only hooks: exported by the library, deliberately absent from cortexstream.h. */
cs_status cs_testing_inject_pool_panic(const cs_engine *engine);
cs_status cs_testing_guard_panic(int32_t payload_panics_on_drop);

/* A panic in a compute kernel, injected on a thread-pool worker (the engine has 2 threads):
 * the request in the failed step ends with CS_FINISH_ERROR naming an internal error, an
 * embedding call returns CS_INTERNAL, and the engine keeps giving exact results. */
static void test_pool_panic_is_an_internal_error_and_the_engine_keeps_serving(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params engine_params = cs_engine_default_params();
    engine_params.model_path = gguf;
    engine_params.embedding_model_path = minilm;
    engine_params.kv_cache_tokens = 1024;
    engine_params.threads = 2;
    cs_engine *faulty = NULL;
    CHECK_OK(cs_engine_new(&engine_params, &faulty));
    if (faulty == NULL) return;

    cs_sampling_params params = greedy_params((int64_t)COUNT_OF(REF_GREEDY_IDS));
    params.ignore_eos = true;
    stream_result *result = calloc(1, sizeof *result);
    cs_request *request = NULL;
    CHECK_OK(cs_testing_inject_pool_panic(faulty));
    CHECK_OK(cs_engine_submit_text(faulty, REF_PROMPT, &params, NULL, NULL, &request));
    if (request != NULL) {
        /* Pull by hand: the FINISHED event's message is lent only until the next pull. */
        const cs_event *event = NULL;
        cs_status status = CS_OK;
        while ((status = cs_request_next_event(request, -1, &event)) == CS_OK &&
               event->kind != CS_EVENT_FINISHED)
            record_event(result, event);
        CHECK(status == CS_OK && event != NULL, "no FINISHED event: status %d", (int)status);
        if (status == CS_OK && event != NULL) {
            CHECK(event->finish_reason == CS_FINISH_ERROR, "finish reason %d", (int)event->finish_reason);
            CHECK(event->error_message != NULL &&
                      strstr(event->error_message, "internal error: a thread-pool task panicked") != NULL,
                  "error message: %s", event->error_message ? event->error_message : "(null)");
        }
        CHECK(result->ids_len == 0, "%zu tokens came out of the failed step", result->ids_len);
        CHECK_OK(cs_request_free(request));
    }
    memset(result, 0, sizeof *result);
    request = NULL;
    CHECK_OK(cs_engine_submit_text(faulty, REF_PROMPT, &params, NULL, NULL, &request));
    if (request != NULL) {
        CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
        CHECK(result->finished.finish_reason == CS_FINISH_LENGTH, "finish reason %d",
              (int)result->finished.finish_reason);
        CHECK(result->ids_len == COUNT_OF(REF_GREEDY_IDS) &&
                  memcmp(result->ids, REF_GREEDY_IDS, sizeof REF_GREEDY_IDS) == 0,
              "after the fault: %zu tokens, not llama.cpp's greedy ones", result->ids_len);
        CHECK_OK(cs_request_free(request));
    }
    free(result);

    const char *texts[] = {"The quick brown fox"};
    static float expected[384], after[384];
    size_t dim = 0;
    CHECK_OK(cs_engine_embed(faulty, texts, 1, expected, 384, &dim));
    CHECK_OK(cs_testing_inject_pool_panic(faulty));
    CHECK_FAILS(cs_engine_embed(faulty, texts, 1, after, 384, &dim), CS_INTERNAL, NULL);
    CHECK(strstr(cs_last_error_message(), "internal error") != NULL &&
              strstr(cs_last_error_message(), "thread-pool task panicked") != NULL,
          "message: %s", cs_last_error_message());
    CHECK_OK(cs_engine_embed(faulty, texts, 1, after, 384, &dim));
    CHECK(memcmp(expected, after, sizeof expected) == 0, "embedding changed after the fault");
    CHECK_FAILS(cs_testing_inject_pool_panic(NULL), CS_INVALID_ARGUMENT, "engine");
    cs_metrics metrics = metrics_of(faulty);
    CHECK(metrics.step_failures == 1 && metrics.requests_failed == 1, "%llu step failures, %llu failed requests",
          (unsigned long long)metrics.step_failures, (unsigned long long)metrics.requests_failed);
    check_idle_with_all_kv_blocks_free(faulty, "engine after a pool panic");
    CHECK_OK(cs_engine_free(faulty));
}

/* A panic inside an entry point is CS_INTERNAL, also when dropping its payload panics again
 * (that second panic used to escape the guard and abort the process). */
static void test_panics_in_the_guard_return_cs_internal(void) {
    CHECK(cs_testing_guard_panic(0) == CS_INTERNAL, "plain panic");
    CHECK(strstr(cs_last_error_message(), "internal error: panic: test-only panic") != NULL,
          "message: %s", cs_last_error_message());
    CHECK(cs_testing_guard_panic(1) == CS_INTERNAL, "panic while dropping the payload");
    CHECK(strstr(cs_last_error_message(), "internal error") != NULL, "message: %s",
          cs_last_error_message());
}

/* `ignore_eos` is a C bool: a byte other than 0 or 1 there (memset, garbage) is rejected, not
 * read as a Rust bool (undefined behaviour). */
static void test_bool_field_bytes_other_than_0_or_1_are_rejected(void) {
    const unsigned char bad_bytes[] = {2, 0x80, 0xFF};
    for (size_t i = 0; i < COUNT_OF(bad_bytes); i++) {
        cs_sampling_params params = greedy_params(2);
        memcpy(&params.ignore_eos, &bad_bytes[i], 1);
        cs_request *request = NULL;
        CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request),
                    CS_INVALID_ARGUMENT, "ignore_eos");
        CHECK(request == NULL, "out_request written on failure");
    }
    cs_sampling_params params = greedy_params(2);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    stream_result *result = calloc(1, sizeof *result);
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK(result->ids_len == 2, "%zu tokens", result->ids_len);
    free(result);
    CHECK_OK(cs_request_free(request));
}

/* A thread count no machine can honour fails cleanly, naming `threads`, before any thread or
 * model is loaded. */
static void test_huge_thread_count_is_rejected(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;
    params.threads = SIZE_MAX;
    cs_engine *created = NULL;
    CHECK_FAILS(cs_engine_new(&params, &created), CS_INVALID_ARGUMENT, "threads");
    CHECK(created == NULL, "out_engine written on failure");
}

/* ---------- the shared bad-input matrix ---------- */

/* tests/hardening/bad_inputs.json, turned into C by gen_matrix_header.py (run.sh writes
 * matrix.h): each case's builder fills a matrix_request, and MATRIX_CASES says what the case
 * expects. Every allocation a builder makes is owned by the request and freed with it. */

enum { MX_GENERATE, MX_EMBED };
enum { MX_OWNED_MAX = 512, MX_MESSAGES_MAX = 8 };

typedef struct {
    int kind;
    char *prompt;
    const uint32_t *prompt_tokens;
    size_t prompt_tokens_len;
    bool has_messages;
    cs_chat_message messages[MX_MESSAGES_MAX];
    size_t messages_len;
    const char **input;
    size_t input_len;
    cs_sampling_params params;
    void *owned[MX_OWNED_MAX];
    size_t owned_len;
} matrix_request;

static void *mx_alloc(matrix_request *r, size_t size) {
    void *p = calloc(1, size);
    if (p == NULL || r->owned_len == MX_OWNED_MAX) {
        fprintf(stderr, "matrix_request: out of memory or too many allocations\n");
        abort();
    }
    r->owned[r->owned_len++] = p;
    return p;
}

/* `times` copies of `text`, NUL-terminated, owned by `r`. */
static char *mx_repeat(matrix_request *r, const char *text, size_t times) {
    size_t len = strlen(text);
    char *out = mx_alloc(r, len * times + 1);
    for (size_t i = 0; i < times; i++) memcpy(out + i * len, text, len);
    return out;
}

static void mx_free(matrix_request *r) {
    for (size_t i = 0; i < r->owned_len; i++) free(r->owned[i]);
    free(r);
}

typedef struct {
    const char *id;
    void (*build)(matrix_request *r);
    cs_status status; /* CS_OK: the request is accepted */
    const char *param; /* cs_last_error_param() of a rejected case */
    const char *message_contains[4]; /* NULL-terminated */
    const char *text; /* exact text of an accepted case, or NULL */
    const char *text_not_equal; /* text an accepted case must not produce, or NULL */
    cs_finish_reason finish_reason; /* CS_FINISH_NONE: not checked */
} matrix_case;

#include "matrix.h"

/* Runs one case through the C API and checks it; `label` names it in failures. */
static void run_matrix_case(const matrix_case *c, const char *label) {
    matrix_request *r = calloc(1, sizeof *r);
    if (r == NULL) abort();
    r->params = cs_sampling_default_params();
    c->build(r);
    cs_status status;
    cs_request *request = NULL;
    if (r->kind == MX_EMBED) {
        cs_model_info info = {.struct_size = sizeof info};
        CHECK_OK(cs_engine_model_info(engine, &info));
        size_t floats = r->input_len * info.embedding_dim;
        float *vectors = malloc((floats ? floats : 1) * sizeof *vectors);
        size_t dim = 0;
        status = cs_engine_embed(engine, r->input, r->input_len, vectors, floats, &dim);
        free(vectors);
    } else if (r->has_messages) {
        status = cs_engine_submit_chat(engine, r->messages, r->messages_len, &r->params, NULL, NULL, &request);
    } else if (r->prompt_tokens != NULL) {
        status = cs_engine_submit_tokens(engine, r->prompt_tokens, r->prompt_tokens_len, &r->params, NULL, NULL,
                                         &request);
    } else {
        status = cs_engine_submit_text(engine, r->prompt, &r->params, NULL, NULL, &request);
    }
    CHECK(status == c->status, "%s: status %d (%s), expected %d", label, (int)status,
          status == CS_OK ? "accepted" : cs_last_error_message(), (int)c->status);
    if (status != CS_OK && c->status != CS_OK) {
        const char *message = cs_last_error_message();
        const char *param = cs_last_error_param();
        CHECK(c->param == NULL || (param != NULL && strcmp(param, c->param) == 0),
              "%s: cs_last_error_param() is \"%s\", expected \"%s\" (message: %s)", label,
              param ? param : "(null)", c->param, message);
        for (const char *const *needle = c->message_contains; *needle != NULL; needle++)
            CHECK(strstr(message, *needle) != NULL, "%s: message \"%s\" does not contain \"%s\"", label,
                  message, *needle);
    }
    if (request != NULL) {
        stream_result *result = calloc(1, sizeof *result);
        if (result == NULL) abort();
        CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
        if (c->status == CS_OK) {
            CHECK(c->text == NULL || strcmp(result->text, c->text) == 0, "%s: text \"%s\", expected \"%s\"",
                  label, result->text, c->text);
            CHECK(c->text_not_equal == NULL || strcmp(result->text, c->text_not_equal) != 0,
                  "%s: text is \"%s\", which the case rules out", label, result->text);
            CHECK(c->finish_reason == CS_FINISH_NONE || result->finished.finish_reason == c->finish_reason,
                  "%s: finish reason %d, expected %d", label, (int)result->finished.finish_reason,
                  (int)c->finish_reason);
        }
        free(result);
        CHECK_OK(cs_request_free(request));
    }
    mx_free(r);
}

static void test_bad_input_matrix_then_canary(void) {
    CHECK(COUNT_OF(MATRIX_CASES) >= 30, "only %zu C cases in the matrix", COUNT_OF(MATRIX_CASES));
    for (size_t i = 0; i < COUNT_OF(MATRIX_CASES); i++) {
        run_matrix_case(&MATRIX_CASES[i], MATRIX_CASES[i].id);
        /* A bad request must leave the engine serving: the canary comes out exactly. */
        char label[128];
        snprintf(label, sizeof label, "canary after %s", MATRIX_CASES[i].id);
        run_matrix_case(&MATRIX_CANARY, label);
    }
}

/* NULL in every pointer argument and invalid UTF-8 in every string input of the API: an
 * error status naming the argument, never a crash; then the engine still serves. */
static void test_null_pointers_and_invalid_utf8_everywhere(void) {
    const char *bad_utf8 = "The \xff\xfe";
    cs_sampling_params params = greedy_params(2);
    cs_request *request = NULL;
    uint32_t *tokens = NULL;
    size_t len = 0;
    char *text = NULL;
    uint32_t ids[] = {504, 1017};
    cs_chat_message message = {"user", "hi"};

    cs_engine *no_engine = NULL;
    CHECK_FAILS(cs_engine_new(NULL, &no_engine), CS_INVALID_ARGUMENT, "params");
    cs_engine_params engine_params = cs_engine_default_params();
    engine_params.model_path = "model.gguf";
    CHECK_FAILS(cs_engine_new(&engine_params, NULL), CS_INVALID_ARGUMENT, "out_engine");
    engine_params.model_path = bad_utf8;
    CHECK_FAILS(cs_engine_new(&engine_params, &no_engine), CS_INVALID_ARGUMENT, "model_path");
    engine_params.model_path = "model.gguf";
    engine_params.tokenizer_path = bad_utf8;
    CHECK_FAILS(cs_engine_new(&engine_params, &no_engine), CS_INVALID_ARGUMENT, "tokenizer_path");
    engine_params.tokenizer_path = NULL;
    engine_params.embedding_model_path = bad_utf8;
    CHECK_FAILS(cs_engine_new(&engine_params, &no_engine), CS_INVALID_ARGUMENT, "embedding_model_path");
    CHECK(no_engine == NULL, "out_engine written by a failing call");

    cs_model_info info = {.struct_size = sizeof info};
    CHECK_FAILS(cs_engine_model_info(NULL, &info), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_model_info(engine, NULL), CS_INVALID_ARGUMENT, "out_info");

    CHECK_FAILS(cs_engine_tokenize(NULL, "x", false, &tokens, &len), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_tokenize(engine, NULL, false, &tokens, &len), CS_INVALID_ARGUMENT, "text");
    CHECK_FAILS(cs_engine_tokenize(engine, bad_utf8, false, &tokens, &len), CS_INVALID_ARGUMENT, "text");
    CHECK_FAILS(cs_engine_tokenize(engine, "x", false, &tokens, NULL), CS_INVALID_ARGUMENT, "out_tokens_len");

    CHECK_FAILS(cs_engine_detokenize(NULL, ids, 2, &text, &len), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_detokenize(engine, NULL, 2, &text, &len), CS_INVALID_ARGUMENT, "tokens");
    CHECK_FAILS(cs_engine_detokenize(engine, ids, 2, NULL, &len), CS_INVALID_ARGUMENT, "out_text");
    CHECK_FAILS(cs_engine_detokenize(engine, ids, 2, &text, NULL), CS_INVALID_ARGUMENT, "out_text_len");

    CHECK_FAILS(cs_engine_apply_chat_template(NULL, &message, 1, true, &text, &len), CS_INVALID_ARGUMENT,
                "engine");
    CHECK_FAILS(cs_engine_apply_chat_template(engine, NULL, 1, true, &text, &len), CS_INVALID_ARGUMENT,
                "messages");
    CHECK_FAILS(cs_engine_apply_chat_template(engine, &message, 1, true, NULL, &len), CS_INVALID_ARGUMENT,
                "out_text");
    cs_chat_message bad_messages[] = {{"user", bad_utf8}, {bad_utf8, "hi"}, {"user", NULL}};
    for (size_t i = 0; i < COUNT_OF(bad_messages); i++) {
        CHECK_FAILS(cs_engine_apply_chat_template(engine, &bad_messages[i], 1, true, &text, &len),
                    CS_INVALID_ARGUMENT, "messages");
        CHECK_FAILS(cs_engine_submit_chat(engine, &bad_messages[i], 1, &params, NULL, NULL, &request),
                    CS_INVALID_ARGUMENT, "messages");
    }
    CHECK(text == NULL && tokens == NULL, "an out-param was written by a failing call");

    float vector[384];
    size_t dim = 0;
    const char *good_text = "ok";
    CHECK_FAILS(cs_engine_embed(NULL, &good_text, 1, vector, 384, &dim), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_embed(engine, NULL, 1, vector, 384, &dim), CS_INVALID_ARGUMENT, "texts");
    CHECK_FAILS(cs_engine_embed(engine, &bad_utf8, 1, vector, 384, &dim), CS_INVALID_ARGUMENT, "texts");
    CHECK_FAILS(cs_engine_embed(engine, &good_text, 1, NULL, 384, &dim), CS_INVALID_ARGUMENT, "out_vectors");
    CHECK_FAILS(cs_engine_embed(engine, &good_text, 1, vector, 384, NULL), CS_INVALID_ARGUMENT, "out_dim");

    CHECK_FAILS(cs_engine_submit_tokens(NULL, ids, 2, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "engine");
    CHECK_FAILS(cs_engine_submit_tokens(engine, ids, 2, NULL, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "params");
    CHECK_FAILS(cs_engine_submit_tokens(engine, ids, 2, &params, NULL, NULL, NULL), CS_INVALID_ARGUMENT,
                "out_request");
    CHECK_FAILS(cs_engine_submit_chat(NULL, &message, 1, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "engine");
    CHECK_FAILS(cs_engine_submit_chat(engine, NULL, 1, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "messages");
    CHECK_FAILS(cs_engine_submit_chat(engine, &message, 1, NULL, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "params");
    CHECK_FAILS(cs_engine_submit_chat(engine, &message, 1, &params, NULL, NULL, NULL), CS_INVALID_ARGUMENT,
                "out_request");

    /* Invalid UTF-8 and NULL inside the sampling params' strings and arrays. */
    const char *bad_stop[] = {bad_utf8};
    cs_sampling_params bad = params;
    bad.stop = bad_stop;
    bad.stop_len = 1;
    CHECK_FAILS(cs_engine_submit_text(engine, "hi", &bad, NULL, NULL, &request), CS_INVALID_ARGUMENT, "stop");
    bad = params;
    bad.stop_token_ids_len = 2;
    CHECK_FAILS(cs_engine_submit_text(engine, "hi", &bad, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "stop_token_ids");
    bad = params;
    bad.logit_bias_ids = ids;
    bad.logit_bias_len = 2;
    CHECK_FAILS(cs_engine_submit_text(engine, "hi", &bad, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "logit_bias");
    CHECK(request == NULL, "out_request written by a failing call");

    /* Request handles. */
    CHECK_OK(cs_engine_submit_tokens(engine, ids, 2, &params, NULL, NULL, &request));
    if (request != NULL) {
        uint64_t id = 0;
        const cs_event *event = NULL;
        CHECK_FAILS(cs_request_id(NULL, &id), CS_INVALID_ARGUMENT, "request");
        CHECK_FAILS(cs_request_id(request, NULL), CS_INVALID_ARGUMENT, "out_id");
        CHECK_FAILS(cs_request_next_event(request, -1, NULL), CS_INVALID_ARGUMENT, "out_event");
        stream_result *result = calloc(1, sizeof *result);
        CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
        CHECK(result->ids_len == 2, "%zu tokens after the failed calls", result->ids_len);
        free(result);
        CHECK_FAILS(cs_request_next_event(request, 0, &event), CS_END_OF_STREAM, NULL);
        CHECK_OK(cs_request_free(request));
    }
    run_matrix_case(&MATRIX_CANARY, "canary after the NULL and UTF-8 calls");
}

/* ---------- runner ---------- */

typedef struct {
    const char *name;
    void (*run)(void);
} test_case;

/* ---------- issue 17: settings, timeouts, logprob bytes, cancel within one step ---------- */

/* cs_engine_new with `params` must fail naming `param`, and write no engine. */
static void check_engine_params_rejected(cs_engine_params params, const char *param) {
    cs_engine *created = NULL;
    CHECK_FAILS(cs_engine_new(&params, &created), CS_INVALID_ARGUMENT, param);
    CHECK(created == NULL, "an engine was created with a bad %s", param);
    if (created != NULL) cs_engine_free(created);
}

static void test_engine_settings_out_of_range_are_rejected(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params params = cs_engine_default_params();
    params.model_path = gguf;

    cs_engine_params bad = params;
    bad.kv_cache_tokens = SIZE_MAX; /* the KV byte count overflows */
    check_engine_params_rejected(bad, "kv_cache_tokens");
    bad = params;
    bad.kv_cache_tokens = (size_t)1 << 40; /* petabytes of KV: more than the machine's memory */
    check_engine_params_rejected(bad, "kv_cache_tokens");
    bad = params;
    bad.threads = SIZE_MAX;
    check_engine_params_rejected(bad, "threads");
    bad = params;
    bad.threads = (size_t)1 << 20;
    check_engine_params_rejected(bad, "threads");
    bad = params;
    bad.max_running = 0;
    check_engine_params_rejected(bad, "max_running");
    bad = params;
    bad.max_batch_tokens = SIZE_MAX;
    check_engine_params_rejected(bad, "max_batch_tokens");
    const double bad_targets[] = {-1.0, NAN, INFINITY, 10000.5};
    for (size_t i = 0; i < COUNT_OF(bad_targets); i++) {
        bad = params;
        bad.target_step_ms = bad_targets[i];
        check_engine_params_rejected(bad, "target_step_ms");
    }
}

/* The step latency target: 25 ms by default, 0 for a fixed budget, and a caller built before
 * the field existed (struct_size ending before it) gets the default, whatever lies past it. */
static void test_target_step_ms_param(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params params = cs_engine_default_params();
    CHECK(params.target_step_ms == 25.0, "default target_step_ms %f", params.target_step_ms);
    params.model_path = gguf;
    params.kv_cache_tokens = 512;
    params.target_step_ms = 0.0;
    cs_engine *fixed = NULL;
    CHECK_OK(cs_engine_new(&params, &fixed));
    if (fixed != NULL) CHECK_OK(cs_engine_free(fixed));
    params.struct_size = offsetof(cs_engine_params, target_step_ms);
    params.target_step_ms = -1.0;
    cs_engine *older = NULL;
    CHECK_OK(cs_engine_new(&params, &older));
    if (older != NULL) CHECK_OK(cs_engine_free(older));
}

/* kv_cache_type: "q8_0" builds an engine that generates; an unknown type is refused naming
 * the field; a caller compiled before the field (shorter struct_size) gets the f16 default. */
static void test_kv_cache_type_param(void) {
    char gguf[4200], minilm[4200];
    model_paths(gguf, minilm, sizeof gguf);
    cs_engine_params params = cs_engine_default_params();
    CHECK(params.kv_cache_type == NULL, "default kv_cache_type is not NULL");
    params.model_path = gguf;
    params.kv_cache_tokens = 512;
    params.kv_cache_type = "q8_0";
    cs_engine *q8 = NULL;
    CHECK_OK(cs_engine_new(&params, &q8));
    if (q8 != NULL) {
        cs_sampling_params greedy = greedy_params(3);
        cs_request *request = NULL;
        CHECK_OK(cs_engine_submit_text(q8, REF_PROMPT, &greedy, NULL, NULL, &request));
        if (request != NULL) {
            const cs_event *event = NULL;
            size_t tokens = 0;
            while (cs_request_next_event(request, -1, &event) == CS_OK && event->kind == CS_EVENT_TOKEN) tokens++;
            CHECK(tokens == 3, "q8_0 engine gave %zu tokens", tokens);
            CHECK_OK(cs_request_free(request));
        }
        CHECK_OK(cs_engine_free(q8));
    }
    params.kv_cache_type = "q4_0";
    cs_engine *refused = NULL;
    CHECK_FAILS(cs_engine_new(&params, &refused), CS_INVALID_ARGUMENT, "kv_cache_type");
    params.struct_size = offsetof(cs_engine_params, kv_cache_type);
    cs_engine *older = NULL;
    CHECK_OK(cs_engine_new(&params, &older));
    if (older != NULL) CHECK_OK(cs_engine_free(older));
}

static void test_next_event_timeouts(void) {
    cs_sampling_params params = greedy_params(2);
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    const cs_event *event = NULL;
    /* -1 is "no limit"; any other negative value is a mistake, not a longer wait. */
    CHECK_FAILS(cs_request_next_event(request, -2, &event), CS_INVALID_ARGUMENT, "timeout_ms");
    CHECK_FAILS(cs_request_next_event(request, INT64_MIN, &event), CS_INVALID_ARGUMENT, "timeout_ms");
    CHECK(event == NULL, "out_event written on failure");
    /* The largest timeout is as good as none (no overflow computing the deadline). */
    CHECK_OK(cs_request_next_event(request, INT64_MAX, &event));
    CHECK(event != NULL && event->kind == CS_EVENT_TOKEN, "first event is not a token");
    stream_result *result = calloc(1, sizeof *result);
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK(result->has_finished && result->ids_len == 1, "%zu more tokens", result->ids_len);
    free(result);
    CHECK_OK(cs_request_free(request));
}

/* Generates one token forced by a logit bias and copies the event's logprob bytes. */
static size_t forced_token_bytes(uint32_t token, uint8_t *out, size_t out_size) {
    cs_sampling_params params = greedy_params(1);
    params.logprobs = 2;
    float bias = 100.0f;
    params.logit_bias_ids = &token;
    params.logit_bias_values = &bias;
    params.logit_bias_len = 1;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, "The crab emoji is", &params, NULL, NULL, &request));
    if (request == NULL) return 0;
    size_t len = 0;
    const cs_event *event = NULL;
    CHECK_OK(cs_request_next_event(request, -1, &event));
    if (event != NULL && event->kind == CS_EVENT_TOKEN) {
        CHECK(event->token_id == token && event->has_logprobs, "token %u, logprobs %d", event->token_id,
              (int)event->has_logprobs);
        len = event->token_bytes.len;
        CHECK(len > 0 && len <= out_size && event->token_bytes.data != NULL, "%zu token bytes", len);
        if (len <= out_size && event->token_bytes.data != NULL) memcpy(out, event->token_bytes.data, len);
        /* The forced token is also the top alternative, with the same bytes. */
        CHECK(event->top_logprobs_len == 2 && event->top_logprobs_bytes != NULL, "%zu alternatives",
              event->top_logprobs_len);
        if (event->top_logprobs_bytes != NULL && event->top_logprobs_len > 0) {
            const cs_bytes *top = &event->top_logprobs_bytes[0];
            CHECK(event->top_logprobs[0].token_id == token && top->len == len &&
                      memcmp(top->data, event->token_bytes.data, len) == 0,
                  "the top alternative's bytes differ from the sampled token's");
        }
    }
    CHECK_OK(cs_request_free(request));
    return len;
}

static void test_logprob_bytes_of_a_partial_utf8_token(void) {
    const char *crab = "\xF0\x9F\xA6\x80"; /* U+1F980, four bytes: byte-level BPE splits it */
    uint32_t *ids = NULL;
    size_t ids_len = 0;
    CHECK_OK(cs_engine_tokenize(engine, crab, false, &ids, &ids_len));
    if (ids == NULL) return;
    CHECK(ids_len >= 2, "the emoji is %zu token(s)", ids_len);
    uint8_t joined[64];
    size_t joined_len = 0;
    for (size_t i = 0; i < ids_len && joined_len < sizeof joined; i++) {
        size_t len = forced_token_bytes(ids[i], joined + joined_len, sizeof joined - joined_len);
        /* A token that is part of the character is not the replacement character EF BF BD. */
        CHECK(len < 4 && !(len == 3 && memcmp(joined + joined_len, "\xEF\xBF\xBD", 3) == 0),
              "token %u reports %zu bytes", ids[i], len);
        joined_len += len;
    }
    CHECK(joined_len == 4 && memcmp(joined, crab, 4) == 0, "the tokens' bytes do not spell the emoji");
    CHECK_OK(cs_tokens_free(ids));
}

/* Pulls token events until `count` have arrived (or the stream ended); returns how many. */
static size_t pull_tokens(cs_request *request, size_t count, int64_t timeout_ms) {
    size_t seen = 0;
    while (seen < count) {
        const cs_event *event = NULL;
        if (cs_request_next_event(request, timeout_ms, &event) != CS_OK) break;
        if (event->kind != CS_EVENT_TOKEN) break;
        seen++;
    }
    return seen;
}

/* Cancels after `tokens_before` tokens; the request may take one more step, never more. */
static void cancel_after_tokens(size_t tokens_before) {
    cs_sampling_params params = greedy_params(2000);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request == NULL) return;
    size_t seen = pull_tokens(request, tokens_before, -1);
    seen += pull_tokens(request, SIZE_MAX, 0); /* what is already queued was sampled before */
    CHECK_OK(cs_request_cancel(request));
    uint64_t steps_at_cancel = metrics_of(engine).steps;
    stream_result *result = calloc(1, sizeof *result);
    CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
    CHECK(result->finished.finish_reason == CS_FINISH_CANCELLED, "finish reason %d",
          (int)result->finished.finish_reason);
    /* Nothing else runs, so the engine stops stepping once the request is gone: the steps
     * counted now are all the steps taken after cancel returned. The step in flight at that
     * moment may complete; the next one must not include the request. */
    cs_metrics after;
    CHECK(wait_idle(engine, &after), "the engine kept running after the cancel");
    CHECK(after.steps - steps_at_cancel <= 1, "%llu steps ran after cs_request_cancel returned (after %zu tokens)",
          (unsigned long long)(after.steps - steps_at_cancel), tokens_before);
    CHECK(after.kv_blocks_free == after.kv_blocks_total, "%llu of %llu KV blocks free after the cancel",
          (unsigned long long)after.kv_blocks_free, (unsigned long long)after.kv_blocks_total);
    /* One token of the step running at cancel(), plus at most one that raced the drain. */
    CHECK(result->ids_len <= 2, "%zu tokens arrived after cs_request_cancel returned (after %zu)",
          result->ids_len, tokens_before);
    CHECK(result->finished.usage.completion_tokens == seen + result->ids_len, "usage says %zu, streamed %zu",
          result->finished.usage.completion_tokens, seen + result->ids_len);
    free(result);
    CHECK_OK(cs_request_free(request));
}

static void test_cancel_takes_effect_within_one_step(void) {
    /* Several phases, so a cancel applied only every few steps cannot pass by luck. */
    for (size_t tokens_before = 3; tokens_before < 7; tokens_before++) cancel_after_tokens(tokens_before);
}

/* What a request's callback saw: its tokens, and the engine's metrics read on the engine
 * thread as its FINISHED event was delivered (so later steps cannot blur them). */
typedef struct {
    const cs_engine *engine;
    size_t tokens;
    cs_finish_reason finish_reason;
    cs_usage usage;
    cs_status metrics_status;
    cs_metrics at_finish;
    atomic_size_t finished; /* set last: the fields above are complete once it is 1 */
} finish_probe;

static bool on_event_probe_metrics(const cs_event *event, void *user_data) {
    finish_probe *probe = user_data;
    if (event->kind == CS_EVENT_TOKEN) {
        probe->tokens++;
        return true;
    }
    probe->finish_reason = event->finish_reason;
    probe->usage = event->usage;
    probe->at_finish.struct_size = sizeof probe->at_finish;
    probe->metrics_status = cs_engine_metrics(probe->engine, &probe->at_finish);
    atomic_store(&probe->finished, 1);
    return true;
}

/* Polls until the engine has prefilled more than `prefill_tokens` prompt tokens in total
 * (at most 60 s: a hang guard); returns the metrics that showed it. */
static cs_metrics wait_prefill_beyond(uint64_t prefill_tokens) {
    cs_metrics metrics = metrics_of(engine);
    for (int tries = 0; tries < 60000 && metrics.prefill_tokens_total <= prefill_tokens; tries++) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
        metrics = metrics_of(engine);
    }
    return metrics;
}

/* Submits a ~3000-token prompt (~47 prefill steps of 64 tokens) while another request runs,
 * cancels it once `chunks_before` chunks of it are prefilled, and checks that it ends within
 * one step, unsampled, with its blocks back before its FINISHED event. `variant` makes the
 * prompt unique, so no earlier run's cached prefix shortens the prefill. */
static void cancel_during_prefill(size_t chunks_before, uint32_t variant) {
    static uint32_t prompt[3000];
    for (size_t i = 0; i < COUNT_OF(prompt); i++) prompt[i] = REF_PROMPT_IDS[i % COUNT_OF(REF_PROMPT_IDS)];
    prompt[0] = variant;
    cs_sampling_params params = greedy_params(16);
    static finish_probe probe;
    memset(&probe, 0, sizeof probe);
    probe.engine = engine;
    cs_metrics before = metrics_of(engine); /* the running request is decoding: no prefill */
    cs_request *prefilling = NULL;
    CHECK_OK(cs_engine_submit_tokens(engine, prompt, COUNT_OF(prompt), &params, on_event_probe_metrics, &probe,
                                     &prefilling));
    if (prefilling == NULL) return;
    uint64_t target = before.prefill_tokens_total + 64 * chunks_before;
    cs_metrics prefill_started = wait_prefill_beyond(target);
    CHECK(prefill_started.prefill_tokens_total > target, "the long prompt was not prefilled beyond %zu chunks",
          chunks_before);
    CHECK_OK(cs_request_cancel(prefilling));
    cs_metrics at_cancel = metrics_of(engine);
    CHECK(wait_for_count(&probe.finished, 1), "no FINISHED event within 60 s of the cancel");
    CHECK(probe.metrics_status == CS_OK, "cs_engine_metrics in the callback returned %d", (int)probe.metrics_status);
    CHECK(probe.finish_reason == CS_FINISH_CANCELLED, "finish reason %d", (int)probe.finish_reason);
    CHECK(probe.tokens == 0 && probe.usage.completion_tokens == 0,
          "%zu tokens sampled for a request cancelled during its prefill", probe.tokens);
    CHECK(probe.usage.prompt_tokens == COUNT_OF(prompt), "prompt_tokens %zu", probe.usage.prompt_tokens);
    const cs_metrics *fin = &probe.at_finish;
    /* The step in flight when cancel returned may complete; the next one must not run it. */
    CHECK(fin->steps - at_cancel.steps <= 1, "%llu steps ran between cs_request_cancel and FINISHED (after %zu chunks)",
          (unsigned long long)(fin->steps - at_cancel.steps), chunks_before);
    CHECK(fin->prefill_tokens_total - before.prefill_tokens_total < COUNT_OF(prompt),
          "the whole prompt was prefilled (%llu tokens): the cancel did not land during the prefill",
          (unsigned long long)(fin->prefill_tokens_total - before.prefill_tokens_total));
    /* Its blocks are back before its FINISHED event is delivered (the running request can
     * take at most one new block in the one step allowed). */
    CHECK(fin->kv_blocks_free > at_cancel.kv_blocks_free,
          "%llu KV blocks free at FINISHED, %llu at the cancel: the prefill's blocks were not freed first",
          (unsigned long long)fin->kv_blocks_free, (unsigned long long)at_cancel.kv_blocks_free);
    CHECK_OK(cs_request_free(prefilling));
}

static void test_cancel_during_a_long_prefill(void) {
    /* A running request keeps the engine stepping while the long prompt is prefilled. */
    cs_sampling_params params = greedy_params(2000);
    params.ignore_eos = true;
    cs_request *running = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &running));
    if (running == NULL) return;
    CHECK(pull_tokens(running, 1, -1) == 1, "the running request produced no token");
    /* Several phases, so a cancel applied only every few steps cannot pass by luck. */
    for (size_t chunks_before = 0; chunks_before < 4; chunks_before++)
        cancel_during_prefill(chunks_before, 1000 + (uint32_t)chunks_before);
    CHECK_OK(cs_request_free(running));
}

/* cs_engine_metrics: NULL arguments and struct sizes it cannot honour are refused naming the
 * argument, an older (shorter) struct gets only its fields, and the counters move by exactly
 * what one request and one embedding call did. */
static void test_engine_metrics(void) {
    cs_metrics metrics;
    memset(&metrics, 0xAB, sizeof metrics);
    metrics.struct_size = sizeof metrics;
    CHECK_FAILS(cs_engine_metrics(NULL, &metrics), CS_INVALID_ARGUMENT, "engine");
    CHECK_FAILS(cs_engine_metrics(engine, NULL), CS_INVALID_ARGUMENT, "out_metrics");
    metrics.struct_size = 0;
    CHECK_FAILS(cs_engine_metrics(engine, &metrics), CS_INVALID_ARGUMENT, "out_metrics");
    metrics.struct_size = sizeof(size_t) - 1;
    CHECK_FAILS(cs_engine_metrics(engine, &metrics), CS_INVALID_ARGUMENT, "out_metrics");
    struct {
        cs_metrics metrics;
        uint64_t field_of_a_newer_header;
    } newer;
    memset(&newer, 0xAB, sizeof newer);
    newer.metrics.struct_size = sizeof newer;
    CHECK_FAILS(cs_engine_metrics(engine, &newer.metrics), CS_INVALID_ARGUMENT, "out_metrics");
    CHECK(metrics.steps == 0xABABABABABABABABull && newer.metrics.steps == 0xABABABABABABABABull,
          "out_metrics written on failure");

    /* A caller built against an older, shorter struct gets only the fields it knows. */
    cs_metrics older;
    memset(&older, 0xAB, sizeof older);
    older.struct_size = offsetof(cs_metrics, steps);
    CHECK_OK(cs_engine_metrics(engine, &older));
    CHECK(older.struct_size == offsetof(cs_metrics, steps), "struct_size overwritten");
    CHECK(older.requests_submitted != 0xABABABABABABABABull, "a field inside struct_size was not written");
    CHECK(older.steps == 0xABABABABABABABABull && older.kv_blocks_total == 0xABABABABABABABABull,
          "wrote past the caller's struct_size");

    cs_metrics before;
    CHECK(wait_idle(engine, &before), "the engine is busy before the test");
    enum { TOKENS = 4 };
    cs_sampling_params params = greedy_params(TOKENS);
    params.ignore_eos = true;
    cs_request *request = NULL;
    CHECK_OK(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request));
    if (request != NULL) {
        stream_result *result = calloc(1, sizeof *result);
        CHECK_FAILS(drain(request, result), CS_END_OF_STREAM, NULL);
        free(result);
        CHECK_OK(cs_request_free(request));
    }
    params.temperature = -0.5f;
    CHECK_FAILS(cs_engine_submit_text(engine, REF_PROMPT, &params, NULL, NULL, &request), CS_INVALID_ARGUMENT,
                "temperature");
    const char *texts[] = {"The quick brown fox"};
    static float vector[384];
    size_t dim = 0;
    CHECK_OK(cs_engine_embed(engine, texts, 1, vector, 384, &dim));
    cs_metrics after;
    CHECK(wait_idle(engine, &after), "the engine kept running");

#define CHECK_DELTA(field, expected)                                                                     \
    CHECK(after.field - before.field == (uint64_t)(expected), #field " moved by %llu, expected %llu",   \
          (unsigned long long)(after.field - before.field), (unsigned long long)(expected))
    CHECK_DELTA(requests_submitted, 1);
    CHECK_DELTA(requests_finished, 1);
    CHECK_DELTA(requests_cancelled, 0);
    CHECK_DELTA(requests_failed, 0);
    CHECK_DELTA(requests_rejected, 1);
    CHECK_DELTA(prompt_tokens_total, COUNT_OF(REF_PROMPT_IDS));
    CHECK_DELTA(generated_tokens_total, TOKENS);
    /* The short prompt fits one step, which samples the first token; each further token is
     * one decode step. */
    CHECK_DELTA(steps, TOKENS);
    CHECK_DELTA(batch_size_count, TOKENS);
    CHECK_DELTA(time_to_first_token_count, 1);
    CHECK_DELTA(per_token_count, TOKENS - 1);
    CHECK_DELTA(step_failures, 0);
    CHECK_DELTA(embedding_requests, 1);
    CHECK_DELTA(recomputed_tokens_total, 0); /* nothing was preempted */
#undef CHECK_DELTA
    uint64_t prompt_seen = (after.prefill_tokens_total - before.prefill_tokens_total) +
                           (after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens);
    CHECK(prompt_seen == COUNT_OF(REF_PROMPT_IDS), "%llu prompt tokens prefilled or reused, the prompt has %zu",
          (unsigned long long)prompt_seen, COUNT_OF(REF_PROMPT_IDS));
    CHECK(after.batch_size_sum > before.batch_size_sum, "batch_size_sum did not grow");
    CHECK(after.step_token_budget > 0, "step_token_budget is %llu after a step", (unsigned long long)after.step_token_budget);
    CHECK(after.time_to_first_token_seconds_sum > before.time_to_first_token_seconds_sum,
          "time_to_first_token_seconds_sum did not grow");
    CHECK(after.kv_blocks_total == before.kv_blocks_total && after.kv_blocks_total > 0, "kv_blocks_total %llu, was %llu",
          (unsigned long long)after.kv_blocks_total, (unsigned long long)before.kv_blocks_total);
}

int main(int argc, char **argv) {
    const char *cache = getenv("CORTEXSTREAM_CACHE");
    if (argc > 1)
        snprintf(models_dir, sizeof models_dir, "%s", argv[1]);
    else if (cache != NULL)
        snprintf(models_dir, sizeof models_dir, "%s/models", cache);
    else
        snprintf(models_dir, sizeof models_dir, "%s/.cache/cortexstream/models", getenv("HOME"));

    engine = new_engine(true);
    if (engine == NULL) {
        fprintf(stderr, "cannot load the models from %s: %s\n", models_dir, cs_last_error_message());
        printf("0 passed, 1 failed\n");
        return 1;
    }
    /* Order matters only in that the greedy run comes before the tests comparing with it. */
    const test_case tests[] = {
        {"version_matches_header", test_version_matches_header},
        {"model_info", test_model_info},
        {"greedy_matches_llama_cpp", test_greedy_matches_llama_cpp},
        {"older_params_struct_gets_defaults", test_older_params_struct_gets_defaults},
        {"callback_and_pull_streams_agree", test_callback_and_pull_streams_agree},
        {"stop_string_and_logprobs", test_stop_string_and_logprobs},
        {"stop_token_id_is_reported", test_stop_token_id_is_reported},
        {"constrained_output_and_bad_constraints", test_constrained_output_and_bad_constraints},
        {"tool_calls_and_bad_tools", test_tool_calls_and_bad_tools},
        {"cancel_from_another_thread", test_cancel_from_another_thread},
        {"free_running_request_cancels_it", test_free_running_request_cancels_it},
        {"callback_returning_false_cancels", test_callback_returning_false_cancels},
        {"bad_arguments_are_reported", test_bad_arguments_are_reported},
        {"prompt_longer_than_context", test_prompt_longer_than_context},
        {"tokenize_detokenize_round_trip", test_tokenize_detokenize_round_trip},
        {"chat_template_matches_llama_cpp", test_chat_template_matches_llama_cpp},
        {"chat_template_param_and_missing_template", test_chat_template_param_and_missing_template},
        {"embeddings", test_embeddings},
        {"bad_input_matrix_then_canary", test_bad_input_matrix_then_canary},
        {"null_pointers_and_invalid_utf8_everywhere", test_null_pointers_and_invalid_utf8_everywhere},
        {"engine_free_with_requests_in_flight", test_engine_free_with_requests_in_flight},
        {"pool_panic_is_an_internal_error", test_pool_panic_is_an_internal_error_and_the_engine_keeps_serving},
        {"panics_in_the_guard_return_cs_internal", test_panics_in_the_guard_return_cs_internal},
        {"bool_field_bytes_other_than_0_or_1_are_rejected", test_bool_field_bytes_other_than_0_or_1_are_rejected},
        {"huge_thread_count_is_rejected", test_huge_thread_count_is_rejected},
        {"engine_settings_out_of_range_are_rejected", test_engine_settings_out_of_range_are_rejected},
        {"target_step_ms_param", test_target_step_ms_param},
        {"kv_cache_type_param", test_kv_cache_type_param},
        {"next_event_timeouts", test_next_event_timeouts},
        {"logprob_bytes_of_a_partial_utf8_token", test_logprob_bytes_of_a_partial_utf8_token},
        {"cancel_takes_effect_within_one_step", test_cancel_takes_effect_within_one_step},
        {"cancel_during_a_long_prefill", test_cancel_during_a_long_prefill},
        {"engine_metrics", test_engine_metrics},
        {"log_callback_receives_a_requests_records", test_log_callback_receives_a_requests_records},
        {"registry_serves_models_by_name", test_registry_serves_models_by_name},
        {"registry_embedding_model_and_loaded_list", test_registry_embedding_model_and_loaded_list},
        {"log_prompts_and_tags", test_log_prompts_and_tags},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < COUNT_OF(tests); i++) {
        checks_failed_in_test = 0;
        tests[i].run();
        check_idle_with_all_kv_blocks_free(engine, tests[i].name);
        bool ok = checks_failed_in_test == 0;
        printf("%s %s\n", ok ? "ok    " : "FAILED", tests[i].name);
        fflush(stdout);
        ok ? passed++ : failed++;
    }
    checks_failed_in_test = 0;
    CHECK_OK(cs_engine_free(engine));
    if (checks_failed_in_test != 0) failed++;
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
