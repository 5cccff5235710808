/*
 * A small C service on libsfc: it registers with an endpoint, reports every second, sets its
 * health, publishes a gauge, looks up a peer group, and exits cleanly when the registry sends
 * `shutdown` (or on SIGINT/SIGTERM).
 *
 * Settings come from the SFC_* environment (SFC_REGISTRY, SFC_CA, SFC_GROUP, ...) and from
 *   service [--group G] [--instance-id I] [--peer-group P] [--port N]
 *
 * Build: make examples-c   (or: cc -Iinclude examples/c/service.c target/release/libsfc.a
 *                            -lm -ldl -lpthread)
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sfc.h"

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

static const char *flag(int argc, char **argv, const char *name, const char *fallback) {
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return argv[i + 1];
        }
    }
    return fallback;
}

/* Prints what failed and the library's message; returns 1 for use as an exit code. */
static int fail(const char *what, sfc_status s) {
    fprintf(stderr, "%s failed (%s): %s\n", what, sfc_status_name(s), sfc_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    const char *group = flag(argc, argv, "--group", getenv("SFC_GROUP") ? getenv("SFC_GROUP") : "example-c");
    const char *instance = flag(argc, argv, "--instance-id", NULL);
    const char *peers = flag(argc, argv, "--peer-group", "example");
    int port = atoi(flag(argc, argv, "--port", "8081"));
    sfc_config *config = sfc_config_new();
    sfc_client *client = NULL;
    sfc_status s;
    int exit_code = 0;
    unsigned long ticks = 0;

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if ((s = sfc_config_set_group(config, group)) != SFC_STATUS_OK ||
        (instance && (s = sfc_config_set_instance_id(config, instance)) != SFC_STATUS_OK) ||
        (s = sfc_config_add_endpoint(config, "http", "127.0.0.1", (uint16_t)port, "http")) != SFC_STATUS_OK ||
        (s = sfc_config_add_tag(config, "example")) != SFC_STATUS_OK ||
        (s = sfc_config_set_version(config, SFC_VERSION)) != SFC_STATUS_OK) {
        sfc_config_free(config);
        return fail("configure", s);
    }
    s = sfc_client_start(config, &client);
    sfc_config_free(config); /* the client keeps what it needs */
    if (s != SFC_STATUS_OK) {
        return fail("start", s);
    }
    sfc_client_set_health(client, SFC_HEALTH_PASSING, "ready");

    while (!interrupted) {
        sfc_event *ev = NULL;
        s = sfc_client_next_event(client, 1000, &ev);
        if (s == SFC_STATUS_NO_EVENT) {
            /* Once a second: publish a gauge; every few seconds look up the peers. */
            ticks++;
            sfc_client_set_gauge(client, "ticks", (double)ticks);
            if (ticks % 5 == 1) {
                char *json = NULL;
                bool stale = false;
                s = sfc_client_lookup(client, peers, true, NULL, NULL, &json, &stale);
                if (s == SFC_STATUS_OK) {
                    printf("peers in %s: %s%s\n", peers, json, stale ? " (stale)" : "");
                    sfc_string_free(json);
                } else {
                    printf("lookup of %s: %s\n", peers, sfc_last_error_message());
                }
            }
            fflush(stdout);
            continue;
        }
        if (s != SFC_STATUS_OK) {
            break; /* stopped */
        }
        if (ev->kind == SFC_EVENT_KIND_CONNECTED) {
            printf("connected: %s\n", ev->json);
        } else if (ev->kind == SFC_EVENT_KIND_DISCONNECTED) {
            printf("disconnected: %s\n", ev->json);
        } else if (ev->kind == SFC_EVENT_KIND_COMMAND) {
            int shutdown = strcmp(ev->command_name, "shutdown") == 0;
            printf("command %s: %s\n", ev->command_name, ev->json);
            if (shutdown) {
                sfc_client_respond(client, ev->command_id, true, "{\"stopping\":true}");
                interrupted = 1;
            } else {
                sfc_client_respond(client, ev->command_id, false, "unknown command");
            }
        }
        fflush(stdout);
        sfc_event_free(ev);
    }

    s = sfc_client_stop(client); /* sends leave */
    if (s != SFC_STATUS_OK && s != SFC_STATUS_TIMEOUT) {
        exit_code = fail("stop", s);
    }
    sfc_client_free(client);
    printf("stopped\n");
    return exit_code;
}
