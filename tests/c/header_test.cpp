// Proves that sfc.h compiles as C++ (extern "C", no C-only constructs) and links from C++.
#include "sfc.h"

#include <cstdio>
#include <cstring>
#include <memory>

namespace {

struct ConfigDeleter {
    void operator()(sfc_config *c) const { sfc_config_free(c); }
};

int failures = 0;

void check(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "  check failed: %s (last error: %s)\n", what, sfc_last_error_message());
        failures++;
    }
}

}  // namespace

int main() {
    check(std::strcmp(sfc_version(), SFC_VERSION) == 0, "sfc_version() == SFC_VERSION");
    std::unique_ptr<sfc_config, ConfigDeleter> config(sfc_config_new());
    check(sfc_config_set_group(config.get(), "cpp") == SFC_STATUS_OK, "set group");
    check(sfc_config_set_group(config.get(), nullptr) == SFC_STATUS_NULL_ARGUMENT, "null group");
    sfc_client *client = nullptr;
    check(sfc_client_start(nullptr, &client) == SFC_STATUS_NULL_ARGUMENT, "null config");
    check(client == nullptr, "no output on failure");
    sfc_health h = SFC_HEALTH_WARNING;
    sfc_event_kind k = SFC_EVENT_KIND_COMMAND;
    check(h == 1 && k == 3, "enum values");
    std::printf("c++ header: %d passed, %d failed\n", failures == 0 ? 1 : 0, failures == 0 ? 0 : 1);
    return failures == 0 ? 0 : 1;
}
