/* A program built only against an installed cortexstream prefix (pkg-config or CMake, see
 * tests/c/install.sh): the header and library it found agree on the version, and it generates
 * a few tokens with the model given as argv[1]. */
#include <cortexstream.h>

#include <stdio.h>
#include <string.h>

#define STR2(x) #x
#define STR(x) STR2(x)

int main(int argc, char **argv) {
    const char *compiled = STR(CS_VERSION_MAJOR) "." STR(CS_VERSION_MINOR) "." STR(CS_VERSION_PATCH);
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    if (strcmp(cs_version(), compiled) != 0) {
        fprintf(stderr, "header %s, library %s\n", compiled, cs_version());
        return 1;
    }
    cs_engine_params ep = cs_engine_default_params();
    ep.model_path = argv[1];
    ep.kv_cache_tokens = 512;
    cs_engine *engine = NULL;
    if (cs_engine_new(&ep, &engine) != CS_OK) {
        fprintf(stderr, "cs_engine_new: %s\n", cs_last_error_message());
        return 1;
    }
    cs_sampling_params sp = cs_sampling_default_params();
    sp.temperature = 0.0f;
    sp.max_tokens = 3;
    cs_request *request = NULL;
    int tokens = 0;
    if (cs_engine_submit_text(engine, "The quick brown fox", &sp, NULL, NULL, &request) == CS_OK) {
        const cs_event *event;
        while (cs_request_next_event(request, -1, &event) == CS_OK && event->kind == CS_EVENT_TOKEN) tokens++;
        cs_request_free(request);
    }
    cs_engine_free(engine);
    printf("cortexstream %s: %d tokens\n", cs_version(), tokens);
    return tokens == 3 ? 0 : 1;
}
