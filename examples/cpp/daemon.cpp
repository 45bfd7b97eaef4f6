// A small C++17 program on the cortexstream C API: loads SmolLM2, runs several chat requests
// concurrently from their own threads with streaming callbacks, cancels one of them
// mid-stream, and prints what each produced and the engine's metrics.
//
//   make -C examples/cpp run                      (model from the default cache)
//   target/c/examples/daemon path/to/model.gguf

#include <cortexstream.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// Turns a failed call into an exception carrying the library's explanation.
void check(cs_status status, const char* what) {
    if (status != CS_OK) {
        throw std::runtime_error(std::string(what) + " failed (status " + std::to_string(status) +
                                 "): " + cs_last_error_message());
    }
}

struct EngineDeleter {
    void operator()(cs_engine* engine) const { cs_engine_free(engine); }
};
using EnginePtr = std::unique_ptr<cs_engine, EngineDeleter>;

struct RequestDeleter {
    void operator()(cs_request* request) const { cs_request_free(request); }
};
using RequestPtr = std::unique_ptr<cs_request, RequestDeleter>;

std::string default_model_path() {
    const char* cache = std::getenv("CORTEXSTREAM_CACHE");
    const char* home = std::getenv("HOME");
    std::string root = cache ? cache : std::string(home ? home : ".") + "/.cache/cortexstream";
    return root + "/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

const char* finish_reason_name(cs_finish_reason reason) {
    switch (reason) {
        case CS_FINISH_STOP: return "stop";
        case CS_FINISH_LENGTH: return "length";
        case CS_FINISH_CANCELLED: return "cancelled";
        case CS_FINISH_ERROR: return "error";
        case CS_FINISH_NONE: break;
    }
    return "none";
}

// One streaming chat request. The callback runs on the engine thread; everything it touches
// is guarded by `mutex_`, and `wait()` blocks the submitting thread until FINISHED arrives.
class StreamingChat {
  public:
    StreamingChat(cs_engine* engine, const std::string& question, int max_tokens) {
        cs_chat_message message{"user", question.c_str()};
        cs_sampling_params params = cs_sampling_default_params();
        params.temperature = 0.0f;  // greedy, so runs are reproducible
        params.max_tokens = max_tokens;
        cs_request* request = nullptr;
        check(cs_engine_submit_chat(engine, &message, 1, &params, &StreamingChat::on_event, this, &request),
              "cs_engine_submit_chat");
        request_.reset(request);
    }

    // The callback holds `this` until FINISHED, so the object must neither move nor die first.
    StreamingChat(const StreamingChat&) = delete;
    StreamingChat& operator=(const StreamingChat&) = delete;
    ~StreamingChat() {
        request_.reset();  // cancels if still running...
        wait();            // ...and the callback may still deliver FINISHED, which uses `this`
    }

    void cancel() { check(cs_request_cancel(request_.get()), "cs_request_cancel"); }
    size_t tokens_so_far() const { return tokens_.load(); }

    bool finished() {
        std::lock_guard<std::mutex> lock(mutex_);
        return finished_;
    }

    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        finished_cv_.wait(lock, [this] { return finished_; });
    }

    std::string summary() {
        wait();
        std::lock_guard<std::mutex> lock(mutex_);
        double seconds = finished_event_.timings.total_ns / 1e9;
        char line[256];
        std::snprintf(line, sizeof line, "[%s] %zu prompt + %zu completion tokens, ttft %.1f ms, %.1f tok/s",
                      finish_reason_name(finished_event_.finish_reason), finished_event_.usage.prompt_tokens,
                      finished_event_.usage.completion_tokens, finished_event_.timings.time_to_first_token_ns / 1e6,
                      seconds > 0 ? finished_event_.usage.completion_tokens / seconds : 0.0);
        return line + std::string("\n  ") + text_;
    }

  private:
    static bool on_event(const cs_event* event, void* user_data) {
        auto* self = static_cast<StreamingChat*>(user_data);
        std::lock_guard<std::mutex> lock(self->mutex_);
        if (event->kind == CS_EVENT_TOKEN) {
            self->text_.append(event->text, event->text_len);  // the piece is lent: copy it
            self->tokens_++;
        } else {
            self->finished_event_ = *event;  // only the plain fields are read later
            self->finished_event_.error_message = nullptr;
            self->finished_ = true;
            self->finished_cv_.notify_all();
        }
        return true;
    }

    RequestPtr request_;
    std::mutex mutex_;
    std::condition_variable finished_cv_;
    std::string text_;
    std::atomic<size_t> tokens_{0};
    cs_event finished_event_{};
    bool finished_ = false;
};

// One line of the engine's counters, e.g. for a log at shutdown.
void print_metrics(const cs_engine* engine) {
    cs_metrics metrics{};
    metrics.struct_size = sizeof metrics;
    check(cs_engine_metrics(engine, &metrics), "cs_engine_metrics");
    std::printf(
        "metrics: %llu requests (%llu cancelled, %llu failed), %llu steps, %llu tokens generated, "
        "%llu of %llu KV blocks free\n",
        static_cast<unsigned long long>(metrics.requests_finished),
        static_cast<unsigned long long>(metrics.requests_cancelled),
        static_cast<unsigned long long>(metrics.requests_failed), static_cast<unsigned long long>(metrics.steps),
        static_cast<unsigned long long>(metrics.generated_tokens_total),
        static_cast<unsigned long long>(metrics.kv_blocks_free),
        static_cast<unsigned long long>(metrics.kv_blocks_total));
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::string model = argc > 1 ? argv[1] : default_model_path();
        std::printf("cortexstream %s, loading %s\n", cs_version(), model.c_str());
        cs_engine_params params = cs_engine_default_params();
        params.model_path = model.c_str();
        params.kv_cache_tokens = 4096;
        cs_engine* raw_engine = nullptr;
        check(cs_engine_new(&params, &raw_engine), "cs_engine_new");
        EnginePtr engine(raw_engine);

        const std::vector<std::string> questions = {
            "What is the capital of France?",
            "Write a haiku about the sea.",
            "Name three primary colors.",
            "Tell me a very long story about a dragon.",  // this one gets cancelled
        };
        const size_t cancelled_index = questions.size() - 1;
        std::vector<std::unique_ptr<StreamingChat>> chats(questions.size());
        std::vector<std::string> summaries(questions.size());
        std::mutex chats_mutex;
        std::condition_variable submitted_cv;
        size_t submitted = 0;  // requests submitted or failed to submit

        // Each client thread submits its request and waits for it; the engine batches them.
        std::vector<std::thread> clients;
        for (size_t i = 0; i < questions.size(); i++) {
            clients.emplace_back([&, i] {
                StreamingChat* mine = nullptr;
                try {
                    auto chat = std::make_unique<StreamingChat>(engine.get(), questions[i], 48);
                    mine = chat.get();
                    std::lock_guard<std::mutex> lock(chats_mutex);
                    chats[i] = std::move(chat);
                } catch (const std::exception& e) {
                    summaries[i] = e.what();
                }
                {
                    std::lock_guard<std::mutex> lock(chats_mutex);
                    submitted++;
                }
                submitted_cv.notify_all();
                if (mine != nullptr) summaries[i] = mine->summary();
            });
        }

        // Cancel the long story from this thread once it has streamed a few tokens.
        StreamingChat* story = nullptr;
        {
            std::unique_lock<std::mutex> lock(chats_mutex);
            submitted_cv.wait(lock, [&] { return submitted == questions.size(); });
            story = chats[cancelled_index].get();
        }
        if (story != nullptr) {
            while (story->tokens_so_far() < 5 && !story->finished()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            story->cancel();
        }

        for (auto& client : clients) client.join();
        for (size_t i = 0; i < questions.size(); i++) {
            std::printf("Q%zu: %s\n%s\n\n", i + 1, questions[i].c_str(), summaries[i].c_str());
        }
        chats.clear();  // requests before the engine, though either order is allowed
        print_metrics(engine.get());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
