// A small long-running HTTP daemon on the cortexstream C API: serves OpenAI's
// `POST /v1/completions` (whole or streamed as server-sent events), `GET /metrics` (the
// engine's counters as JSON) and `GET /health`, until SIGINT or SIGTERM.
//
//   make -C examples/cpp run                                     (model from the default cache)
//   target/c/examples/daemon [--model FILE.gguf] [--host 127.0.0.1] [--port 8080]
//
// `--port 0` picks a free port. The first line on stdout is always
// `listening on http://HOST:PORT`, once requests are accepted.
//
// A client that disconnects mid-stream cancels its request in the engine: each streamed
// request is pulled with `cs_request_next_event` on its HTTP worker thread, and the request is
// cancelled as soon as a write fails or the socket is found closed while waiting for a token.
//
// HTTP comes from cpp-httplib and JSON from nlohmann/json, both from the distribution's
// packages (Debian: libcpp-httplib-dev, nlohmann-json3-dev; tests/c/run.sh installs them).

#include <cortexstream.h>
#include <httplib.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using nlohmann::json;

// How long a streaming worker waits for the next token before checking the client is still there.
constexpr int64_t kPollMs = 100;

struct EngineDeleter {
    void operator()(cs_engine* engine) const { cs_engine_free(engine); }
};
using EnginePtr = std::unique_ptr<cs_engine, EngineDeleter>;

struct RequestDeleter {
    // Freeing a running request cancels it first.
    void operator()(cs_request* request) const { cs_request_free(request); }
};
using RequestPtr = std::shared_ptr<cs_request>;

// A request the client got wrong: HTTP 400 in OpenAI's error shape, naming the field.
struct BadRequest : std::runtime_error {
    BadRequest(std::string param, const std::string& message)
        : std::runtime_error(message), param(std::move(param)) {}
    std::string param;
};

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

// vLLM's `stop_reason` of a FINISHED event: the stop string or stop token id that ended the
// request, null when something else did (end-of-generation token, length, cancel, error).
json stop_reason_value(const cs_event& event) {
    if (event.stop_kind == CS_STOP_STRING) return std::string(event.stop_string, event.stop_string_len);
    if (event.stop_kind == CS_STOP_TOKEN) return event.stop_token_id;
    return nullptr;
}

json error_body(const std::string& message, const std::string& type, const std::optional<std::string>& param) {
    return {{"error", {{"message", message}, {"type", type}, {"param", param ? json(*param) : json(nullptr)}}}};
}

void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
}

// The sampling fields of an OpenAI completion request that this daemon understands (others
// are ignored, as OpenAI clients send many). Types are checked here; ranges by the library.
class CompletionRequest {
  public:
    explicit CompletionRequest(const std::string& body_text) {
        json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
        if (body.is_discarded() || !body.is_object()) throw BadRequest("body", "the body must be a JSON object");
        if (!body.contains("prompt") || !body["prompt"].is_string()) {
            throw BadRequest("prompt", "prompt must be a string");
        }
        prompt = text_without_nul(body["prompt"], "prompt");
        stream = optional_bool(body, "stream").value_or(false);
        params = cs_sampling_default_params();
        params.max_tokens = optional_integer(body, "max_tokens").value_or(16);  // OpenAI's default
        if (auto v = optional_number(body, "temperature")) params.temperature = static_cast<float>(*v);
        if (auto v = optional_number(body, "top_p")) params.top_p = static_cast<float>(*v);
        if (auto v = optional_integer(body, "seed")) params.seed = static_cast<uint64_t>(*v);
        // vLLM's extension: keep generating past end-of-generation tokens.
        params.ignore_eos = optional_bool(body, "ignore_eos").value_or(false);
        read_stop(body);
    }

    // Submits for pulling with cs_request_next_event; throws BadRequest for what the library refuses.
    RequestPtr submit(const cs_engine* engine) const {
        cs_sampling_params submitted = params;
        std::vector<const char*> stop_pointers;
        for (const auto& s : stop) stop_pointers.push_back(s.c_str());
        submitted.stop = stop_pointers.empty() ? nullptr : stop_pointers.data();
        submitted.stop_len = stop_pointers.size();
        cs_request* request = nullptr;
        cs_status status = cs_engine_submit_text(engine, prompt.c_str(), &submitted, nullptr, nullptr, &request);
        if (status != CS_OK) {
            const char* param = cs_last_error_param();
            throw BadRequest(param ? param : "", cs_last_error_message());
        }
        return RequestPtr(request, RequestDeleter());
    }

    std::string prompt;
    bool stream = false;

  private:
    static const json* field(const json& body, const char* name) {
        auto it = body.find(name);
        return it == body.end() || it->is_null() ? nullptr : &*it;
    }
    static std::optional<bool> optional_bool(const json& body, const char* name) {
        const json* v = field(body, name);
        if (!v) return std::nullopt;
        if (!v->is_boolean()) throw BadRequest(name, std::string(name) + " must be true or false");
        return v->get<bool>();
    }
    static std::optional<double> optional_number(const json& body, const char* name) {
        const json* v = field(body, name);
        if (!v) return std::nullopt;
        if (!v->is_number()) throw BadRequest(name, std::string(name) + " must be a number");
        return v->get<double>();
    }
    static std::optional<int64_t> optional_integer(const json& body, const char* name) {
        const json* v = field(body, name);
        if (!v) return std::nullopt;
        if (!v->is_number_integer()) throw BadRequest(name, std::string(name) + " must be an integer");
        return v->get<int64_t>();
    }
    void read_stop(const json& body) {
        const json* v = field(body, "stop");
        if (!v) return;
        if (v->is_string()) {
            stop.push_back(text_without_nul(*v, "stop"));
            return;
        }
        if (!v->is_array()) throw BadRequest("stop", "stop must be a string or a list of strings");
        for (const auto& item : *v) {
            if (!item.is_string()) throw BadRequest("stop", "stop must be a string or a list of strings");
            stop.push_back(text_without_nul(item, "stop"));
        }
    }
    // The C API takes NUL-terminated strings: a "\u0000" inside would silently cut the text short.
    static std::string text_without_nul(const json& value, const char* name) {
        std::string text = value.get<std::string>();
        if (text.find('\0') != std::string::npos) {
            throw BadRequest(name, std::string(name) + " must not contain NUL characters (\\u0000)");
        }
        return text;
    }

    cs_sampling_params params{};
    std::vector<std::string> stop;
};

// One OpenAI `text_completion` object (a whole response, or one SSE chunk of a stream).
json completion_object(uint64_t id, const std::string& model, const std::string& text, const json& finish_reason) {
    return {{"id", "cmpl-" + std::to_string(id)},
            {"object", "text_completion"},
            {"created", static_cast<int64_t>(std::time(nullptr))},
            {"model", model},
            {"choices", json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}})}};
}

json usage_object(const cs_usage& usage) {
    return {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

uint64_t request_id(const cs_request* request) {
    uint64_t id = 0;
    cs_request_id(request, &id);
    return id;
}

// The whole completion, waiting on this worker thread.
json complete(const RequestPtr& request, const std::string& model) {
    std::string text;
    const cs_event* event = nullptr;
    while (cs_request_next_event(request.get(), -1, &event) == CS_OK) {
        if (event->kind == CS_EVENT_TOKEN) {
            text.append(event->text, event->text_len);
            continue;
        }
        json body = completion_object(request_id(request.get()), model, text, finish_reason_name(event->finish_reason));
        body["choices"][0]["stop_reason"] = stop_reason_value(*event);
        body["usage"] = usage_object(event->usage);
        return body;
    }
    throw std::runtime_error(std::string("the request ended without a FINISHED event: ") + cs_last_error_message());
}

// Streams a request as server-sent events. cpp-httplib calls the provider again and again on
// this worker thread; each call forwards at most one event. Returning false (the client is
// gone, a write failed) ends the response, and the releaser then cancels the request.
void stream(httplib::Response& res, RequestPtr request, std::string model) {
    const uint64_t id = request_id(request.get());
    auto provider = [request, model, id](size_t /*offset*/, httplib::DataSink& sink) {
        const cs_event* event = nullptr;
        cs_status status = cs_request_next_event(request.get(), kPollMs, &event);
        if (status == CS_TIMEOUT) return sink.is_writable();  // a long prefill: is anyone listening?
        if (status != CS_OK) return false;
        auto send = [&sink](const std::string& data) {
            std::string frame = "data: " + data + "\n\n";
            return sink.write(frame.data(), frame.size());
        };
        if (event->kind == CS_EVENT_TOKEN) {
            // Held-back text (part of a character or of a possible stop string) arrives later.
            if (event->text_len == 0) return sink.is_writable();
            return send(completion_object(id, model, std::string(event->text, event->text_len), nullptr).dump());
        }
        json last = completion_object(id, model, "", finish_reason_name(event->finish_reason));
        last["choices"][0]["stop_reason"] = stop_reason_value(*event);
        last["usage"] = usage_object(event->usage);
        bool ok = send(last.dump()) && send("[DONE]");
        sink.done();
        return ok;
    };
    auto releaser = [request](bool success) {
        if (!success) cs_request_cancel(request.get());
    };
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", provider, releaser);
}

json metrics_object(const cs_engine* engine) {
    cs_metrics m{};
    m.struct_size = sizeof m;
    if (cs_engine_metrics(engine, &m) != CS_OK) throw std::runtime_error(cs_last_error_message());
    return {{"requests_submitted", m.requests_submitted},
            {"requests_finished", m.requests_finished},
            {"requests_cancelled", m.requests_cancelled},
            {"requests_failed", m.requests_failed},
            {"requests_rejected", m.requests_rejected},
            {"running", m.running},
            {"queue_depth", m.queue_depth},
            {"steps", m.steps},
            {"generated_tokens_total", m.generated_tokens_total},
            {"kv_blocks_free", m.kv_blocks_free},
            {"kv_blocks_total", m.kv_blocks_total}};
}

void add_routes(httplib::Server& server, const cs_engine* engine, const std::string& model) {
    server.Post("/v1/completions", [engine, model](const httplib::Request& req, httplib::Response& res) {
        try {
            CompletionRequest completion(req.body);
            RequestPtr request = completion.submit(engine);
            if (completion.stream) {
                stream(res, std::move(request), model);
            } else {
                send_json(res, 200, complete(request, model));
            }
        } catch (const BadRequest& e) {
            auto param = e.param.empty() ? std::nullopt : std::optional<std::string>(e.param);
            send_json(res, 400, error_body(e.what(), "invalid_request_error", param));
        }
    });
    server.Get("/metrics", [engine](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, metrics_object(engine));
    });
    server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, {{"status", "ok"}});
    });
    // Anything a handler throws beyond a bad request: 500 with the reason, never a crash.
    server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string message = "internal error";
        try {
            std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            message = e.what();
        } catch (...) {
        }
        send_json(res, 500, error_body(message, "internal_error", std::nullopt));
    });
}

struct Options {
    std::string model = default_model_path();
    std::string host = "127.0.0.1";
    int port = 8080;
};

Options parse_options(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; i++) {
        std::string flag = argv[i];
        if (i + 1 >= argc) throw std::invalid_argument("usage: daemon [--model FILE] [--host HOST] [--port PORT]");
        std::string value = argv[++i];
        if (flag == "--model") {
            options.model = value;
        } else if (flag == "--host") {
            options.host = value;
        } else if (flag == "--port") {
            size_t used = 0;
            int port = -1;
            try {
                port = std::stoi(value, &used);
            } catch (const std::exception&) {
            }
            if (used != value.size() || port < 0 || port > 65535) {
                throw std::invalid_argument("--port must be 0 to 65535, got " + value);
            }
            options.port = port;
        } else {
            throw std::invalid_argument("unknown option " + flag);
        }
    }
    return options;
}

// SIGINT and SIGTERM, blocked in this thread and so in every thread started after it (the
// engine's, the server's): only `stop_on_signals` takes them.
sigset_t block_stop_signals() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    return signals;
}

// Stops the server from a thread that waits for the signals (a signal handler may not call
// into the server).
std::thread stop_on_signals(httplib::Server& server, sigset_t signals) {
    return std::thread([&server, signals] {
        int received = 0;
        sigwait(&signals, &received);
        server.stop();
    });
}

}  // namespace

int main(int argc, char** argv) {
    try {
        Options options = parse_options(argc, argv);
        sigset_t stop_signals = block_stop_signals();
        signal(SIGPIPE, SIG_IGN);  // a closed client socket is a failed write, not a crash
        cs_engine_params params = cs_engine_default_params();
        params.model_path = options.model.c_str();
        params.kv_cache_tokens = 4096;
        cs_engine* raw_engine = nullptr;
        if (cs_engine_new(&params, &raw_engine) != CS_OK) {
            throw std::runtime_error(std::string("cs_engine_new: ") + cs_last_error_message());
        }
        EnginePtr engine(raw_engine);
        cs_model_info info{};
        info.struct_size = sizeof info;
        std::string model_name = cs_engine_model_info(engine.get(), &info) == CS_OK && info.name ? info.name : "model";

        httplib::Server server;
        add_routes(server, engine.get(), model_name);
        std::thread signal_waiter = stop_on_signals(server, stop_signals);
        int port = options.port == 0 ? server.bind_to_any_port(options.host)
                                     : (server.bind_to_port(options.host, options.port) ? options.port : -1);
        if (port < 0) throw std::runtime_error("cannot listen on " + options.host + ":" + std::to_string(options.port));
        std::printf("listening on http://%s:%d\n", options.host.c_str(), port);
        std::fflush(stdout);
        server.listen_after_bind();  // returns after server.stop(), with every handler finished

        // Wake the signal thread if the server stopped for another reason.
        kill(getpid(), SIGTERM);
        signal_waiter.join();
        std::printf("stopped: %s\n", metrics_object(engine.get()).dump().c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
