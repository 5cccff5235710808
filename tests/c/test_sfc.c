/*
 * C test suite for libsfc, run against a real `sfc registry` that tests/c/run.sh starts
 * (SFC_TEST_REGISTRY = its address, SFC_TEST_CA = the CA it trusts). Built with
 * -Wall -Wextra -Werror -pedantic and run once under AddressSanitizer and once under Valgrind.
 * Prints "N passed, N failed" and exits non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <pthread.h>
#include <math.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sfc.h"

static int passed;
static int failed;
static const char *registry;
static const char *ca;

/* Group names carry the process id: the ASan and Valgrind runs share one registry, and each
 * must see its own instances join. */
static char group_svc[64], group_watch[64], group_stop[64], group_free[64];
static char watch_filter[128], svc_filter[128], svc_id[96], svc_id_json[128];

static void name_groups(void) {
    long pid = (long)getpid();
    snprintf(group_svc, sizeof group_svc, "c-svc-%ld", pid);
    snprintf(group_watch, sizeof group_watch, "c-watch-%ld", pid);
    snprintf(group_stop, sizeof group_stop, "c-stop-%ld", pid);
    snprintf(group_free, sizeof group_free, "c-free-%ld", pid);
    snprintf(watch_filter, sizeof watch_filter, "{\"group\":\"%s\"}", group_watch);
    snprintf(svc_filter, sizeof svc_filter, "{\"group\":\"%s\"}", group_svc);
    snprintf(svc_id, sizeof svc_id, "%s/c-one", group_svc);
    snprintf(svc_id_json, sizeof svc_id_json, "\"id\":\"%s\"", svc_id);
}

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  %s:%d: check failed: %s\n  last error: %s\n", __FILE__,   \
                    __LINE__, #cond, sfc_last_error_message());                          \
            return 0;                                                                    \
        }                                                                                \
    } while (0)

#define CHECK_STATUS(call, want)                                                         \
    do {                                                                                 \
        sfc_status got_ = (call);                                                        \
        if (got_ != (want)) {                                                            \
            fprintf(stderr, "  %s:%d: %s returned %s, want %s\n  last error: %s\n",      \
                    __FILE__, __LINE__, #call, sfc_status_name(got_),                    \
                    sfc_status_name(want), sfc_last_error_message());                    \
            return 0;                                                                    \
        }                                                                                \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, SFC_STATUS_OK)

/* The last error message mentions `word`. */
#define CHECK_ERROR_MENTIONS(word)                                                       \
    CHECK(strstr(sfc_last_error_message(), (word)) != NULL)

/* SFC_TEST_ONLY=<text> runs only the tests whose name contains it (for a developer; run.sh
 * never sets it), and says so for every other. */
static void run(const char *name, int (*test)(void)) {
    const char *only = getenv("SFC_TEST_ONLY");
    if (only != NULL && strstr(name, only) == NULL) {
        printf("not run (SFC_TEST_ONLY=%s): %s\n", only, name);
        return;
    }
    if (test()) {
        passed++;
        printf("ok   %s\n", name);
    } else {
        failed++;
        printf("FAIL %s\n", name);
    }
    fflush(stdout);
}

/* A config for a service in `group` that trusts the test registry's CA. */
static sfc_config *service_config(const char *group, const char *instance_id) {
    sfc_config *c = sfc_config_new();
    if (sfc_config_ignore_env(c) != SFC_STATUS_OK || sfc_config_add_registry(c, registry) != SFC_STATUS_OK ||
        sfc_config_set_ca(c, ca) != SFC_STATUS_OK || sfc_config_set_group(c, group) != SFC_STATUS_OK ||
        sfc_config_set_instance_id(c, instance_id) != SFC_STATUS_OK ||
        sfc_config_set_interval_ms(c, 1000) != SFC_STATUS_OK) {
        sfc_config_free(c);
        return NULL;
    }
    return c;
}

static sfc_client *start_service(const char *group, const char *instance_id) {
    sfc_config *c = service_config(group, instance_id);
    sfc_client *client = NULL;
    if (c == NULL || sfc_client_start(c, &client) != SFC_STATUS_OK) {
        client = NULL;
    }
    sfc_config_free(c);
    return client;
}

static sfc_client *start_observer(void) {
    sfc_config *c = sfc_config_new_observer();
    sfc_client *client = NULL;
    if (sfc_config_ignore_env(c) != SFC_STATUS_OK || sfc_config_add_registry(c, registry) != SFC_STATUS_OK ||
        sfc_config_set_ca(c, ca) != SFC_STATUS_OK || sfc_client_start(c, &client) != SFC_STATUS_OK) {
        client = NULL;
    }
    sfc_config_free(c);
    return client;
}

/* Pulls events until one of `kind` arrives or `tries` timeouts of 1 s pass. */
static int wait_event(sfc_client *client, sfc_event_kind kind, int tries) {
    for (int i = 0; i < tries; i++) {
        sfc_event *ev = NULL;
        sfc_status s = sfc_client_next_event(client, 1000, &ev);
        if (s == SFC_STATUS_OK) {
            int hit = ev->kind == kind;
            sfc_event_free(ev);
            if (hit) {
                return 1;
            }
        } else if (s != SFC_STATUS_NO_EVENT) {
            return 0;
        }
    }
    return 0;
}

/* Pulls watch events until one whose JSON contains `needle` arrives (bounded). */
static int wait_watch(sfc_watch *w, const char *needle, int tries) {
    for (int i = 0; i < tries; i++) {
        char *json = NULL;
        sfc_status s = sfc_watch_next(w, 1000, &json);
        if (s == SFC_STATUS_OK) {
            int hit = strstr(json, needle) != NULL;
            sfc_string_free(json);
            if (hit) {
                return 1;
            }
        } else if (s != SFC_STATUS_NO_EVENT) {
            return 0;
        }
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------------------- */

static int test_version_macros_match_library(void) {
    char expect[64];
    CHECK(strcmp(sfc_version(), SFC_VERSION) == 0);
    snprintf(expect, sizeof expect, "%d.%d.%d", SFC_VERSION_MAJOR, SFC_VERSION_MINOR, SFC_VERSION_PATCH);
    CHECK(strncmp(SFC_VERSION, expect, strlen(expect)) == 0);
    CHECK(strcmp(sfc_status_name(SFC_STATUS_NULL_ARGUMENT), "null-argument") == 0);
    CHECK(strcmp(sfc_status_name(9999), "unknown") == 0);
    return 1;
}

static int test_null_arguments_are_errors(void) {
    sfc_config *c = sfc_config_new();
    sfc_client *sentinel = (sfc_client *)&passed;
    sfc_client *out = sentinel;
    char *text = (char *)&failed;
    sfc_event *ev = (sfc_event *)&failed;

    CHECK_STATUS(sfc_config_set_group(NULL, "g"), SFC_STATUS_NULL_ARGUMENT);
    CHECK_ERROR_MENTIONS("config");
    CHECK_STATUS(sfc_config_set_group(c, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK_ERROR_MENTIONS("group");
    CHECK_STATUS(sfc_config_add_endpoint(c, "http", NULL, 80, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK_ERROR_MENTIONS("endpoint host");
    CHECK_STATUS(sfc_client_start(NULL, &out), SFC_STATUS_NULL_ARGUMENT);
    CHECK(out == sentinel); /* outputs are written only on success */
    CHECK_STATUS(sfc_client_start(c, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK_ERROR_MENTIONS("out_client");
    CHECK_STATUS(sfc_client_set_health(NULL, SFC_HEALTH_PASSING, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(sfc_client_set_gauge(NULL, "x", 1.0), SFC_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(sfc_client_lookup(NULL, "g", false, NULL, NULL, &text, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK(text == (char *)&failed);
    CHECK_STATUS(sfc_client_next_event(NULL, 0, &ev), SFC_STATUS_NULL_ARGUMENT);
    CHECK(ev == (sfc_event *)&failed);
    CHECK_STATUS(sfc_client_stop(NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(sfc_watch_next(NULL, 0, &text), SFC_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(sfc_client_respond(NULL, 1, true, NULL), SFC_STATUS_NULL_ARGUMENT);
    CHECK(!sfc_client_is_connected(NULL));
    /* Every _free accepts NULL. */
    sfc_config_free(NULL);
    sfc_client_free(NULL);
    sfc_watch_free(NULL);
    sfc_event_free(NULL);
    sfc_string_free(NULL);
    sfc_config_free(c);
    return 1;
}

static int test_non_utf8_strings_are_errors(void) {
    sfc_config *c = sfc_config_new();
    const char bad[] = {'s', 'v', 'c', (char)0xff, (char)0xfe, 0};
    CHECK_STATUS(sfc_config_set_group(c, bad), SFC_STATUS_INVALID_UTF8);
    CHECK_ERROR_MENTIONS("group");
    CHECK_STATUS(sfc_config_add_tag(c, bad), SFC_STATUS_INVALID_UTF8);
    CHECK_ERROR_MENTIONS("tag");
    CHECK_STATUS(sfc_config_set_metadata(c, "k", bad), SFC_STATUS_INVALID_UTF8);
    CHECK_ERROR_MENTIONS("metadata value");
    sfc_config_free(c);
    return 1;
}

static int test_bad_settings_name_the_setting(void) {
    sfc_config *c = sfc_config_new();
    sfc_client *client = NULL;
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_set_insecure_plaintext(c, true));
    /* No group and no service. */
    CHECK_STATUS(sfc_client_start(c, &client), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("group");
    CHECK(client == NULL);
    CHECK_OK(sfc_config_set_group(c, "c-bad"));
    CHECK_OK(sfc_config_add_registry(c, "no-port-here"));
    CHECK_STATUS(sfc_client_start(c, &client), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("no-port-here");
    CHECK_STATUS(sfc_config_set_api(c, "soap", "http://x"), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("soap");
    CHECK_STATUS(sfc_config_add_endpoint(c, "http", "127.0.0.1", 0, NULL), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("port");
    sfc_config_free(c);
    return 1;
}

static int test_bad_ca_file_fails_at_start(void) {
    sfc_config *c = service_config("c-bad-ca", "one");
    sfc_client *client = NULL;
    char path[] = "/tmp/sfc-c-test-ca-XXXXXX";
    int fd;
    CHECK(c != NULL);
    CHECK_OK(sfc_config_set_ca(c, "/nonexistent/sfc/ca.pem"));
    CHECK_STATUS(sfc_client_start(c, &client), SFC_STATUS_FILE);
    CHECK_ERROR_MENTIONS("/nonexistent/sfc/ca.pem");
    CHECK(client == NULL);
    /* A file that exists but holds no certificate. */
    fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, "not a certificate\n", 18) == 18);
    close(fd);
    CHECK_OK(sfc_config_set_ca(c, path));
    CHECK(sfc_client_start(c, &client) != SFC_STATUS_OK);
    CHECK_ERROR_MENTIONS(path);
    CHECK(client == NULL);
    unlink(path);
    sfc_config_free(c);
    return 1;
}

static int test_registry_down(void) {
    /* A loopback port nobody listens on: bind one, note it, close it. */
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    char where[64];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sfc_config *c;
    sfc_client *client = NULL;
    char *json = NULL;
    bool stale = false;
    CHECK(fd >= 0);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
    close(fd);
    snprintf(where, sizeof where, "127.0.0.1:%u", (unsigned)ntohs(addr.sin_port));

    c = sfc_config_new();
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_add_registry(c, where));
    CHECK_OK(sfc_config_set_ca(c, ca));
    CHECK_OK(sfc_config_set_group(c, "c-down"));
    CHECK_OK(sfc_config_set_connect_timeout_ms(c, 500));
    CHECK_OK(sfc_config_set_stop_timeout_ms(c, 500));
    /* Start never waits on the network: it succeeds with the registry down. */
    CHECK_OK(sfc_client_start(c, &client));
    sfc_config_free(c);
    CHECK_STATUS(sfc_client_wait_connected(client, 300), SFC_STATUS_TIMEOUT);
    CHECK(!sfc_client_is_connected(client));
    CHECK_STATUS(sfc_client_lookup(client, "anything", false, NULL, NULL, &json, &stale), SFC_STATUS_UNREACHABLE);
    CHECK(json == NULL);
    CHECK_ERROR_MENTIONS(where);
    /* Health and gauges are local until a registry is reachable. */
    CHECK_OK(sfc_client_set_health(client, SFC_HEALTH_WARNING, "no registry"));
    CHECK_OK(sfc_client_set_gauge(client, "queued", 2.0));
    {
        sfc_status s = sfc_client_stop(client);
        CHECK(s == SFC_STATUS_OK || s == SFC_STATUS_TIMEOUT);
    }
    CHECK_OK(sfc_client_stop(client));
    sfc_client_free(client);
    return 1;
}

static int test_register_report_health_gauge_lookup(void) {
    sfc_config *c = service_config(group_svc, "c-one");
    sfc_client *svc = NULL;
    sfc_client *obs = NULL;
    char *json = NULL;
    char *id = NULL;
    bool stale = true;
    int seen_gauge = 0;
    CHECK(c != NULL);
    CHECK_OK(sfc_config_set_service(c, "c-service"));
    CHECK_OK(sfc_config_add_endpoint(c, "http", "127.0.0.1", 8080, "http"));
    CHECK_OK(sfc_config_add_tag(c, "c-suite"));
    CHECK_OK(sfc_config_set_metadata(c, "lang", "c"));
    CHECK_OK(sfc_config_set_version(c, "1.2.3"));
    CHECK_OK(sfc_config_set_api(c, "openapi", "http://127.0.0.1:8080/openapi.json"));
    CHECK_OK(sfc_client_start(c, &svc));
    sfc_config_free(c);

    CHECK_OK(sfc_client_id(svc, &id));
    CHECK(strcmp(id, svc_id) == 0);
    sfc_string_free(id);
    CHECK(wait_event(svc, SFC_EVENT_KIND_CONNECTED, 20));
    CHECK(sfc_client_is_connected(svc));

    CHECK_OK(sfc_client_set_health(svc, SFC_HEALTH_WARNING, "warming up"));
    CHECK_OK(sfc_client_set_gauge(svc, "queue_depth", 3.0));
    CHECK_OK(sfc_client_set_runtime_metrics(svc, "{\"c_heap_bytes\": 4096}"));
    CHECK_STATUS(sfc_client_set_health(svc, 7, NULL), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("health");
    CHECK_STATUS(sfc_client_set_gauge(svc, "", 1.0), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("gauge name");
    CHECK_STATUS(sfc_client_set_gauge(svc, "nan_gauge", NAN), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("nan_gauge");
    CHECK_STATUS(sfc_client_set_runtime_metrics(svc, "{not json"), SFC_STATUS_INVALID_JSON);
    CHECK_ERROR_MENTIONS("runtime metrics");

    obs = start_observer();
    CHECK(obs != NULL);
    /* The gauge travels with the next report: ask the registry until it shows (bounded). */
    for (int i = 0; i < 20 && !seen_gauge; i++) {
        CHECK_OK(sfc_client_query(obs, svc_filter, &json));
        seen_gauge = strstr(json, "\"queue_depth\":3") != NULL && strstr(json, "\"c_heap_bytes\":4096") != NULL;
        sfc_string_free(json);
        json = NULL;
        if (!seen_gauge) {
            struct timespec pause = {0, 250 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    CHECK(seen_gauge);

    CHECK_OK(sfc_client_lookup(obs, group_svc, false, NULL, NULL, &json, &stale));
    CHECK(!stale);
    CHECK(strstr(json, svc_id_json) != NULL);
    CHECK(strstr(json, "\"service\":\"c-service\"") != NULL);
    CHECK(strstr(json, "\"health\":\"warning\"") != NULL);
    CHECK(strstr(json, "\"health_note\":\"warming up\"") != NULL);
    CHECK(strstr(json, "\"port\":8080") != NULL);
    CHECK(strstr(json, "\"version\":\"1.2.3\"") != NULL);
    sfc_string_free(json);
    json = NULL;
    /* healthy_only leaves out a warning instance; a tag that nobody has gives []. */
    CHECK_OK(sfc_client_lookup(obs, group_svc, true, NULL, NULL, &json, NULL));
    CHECK(strcmp(json, "[]") == 0);
    sfc_string_free(json);
    json = NULL;
    CHECK_OK(sfc_client_lookup(obs, group_svc, false, NULL, "no-such-tag", &json, NULL));
    CHECK(strcmp(json, "[]") == 0);
    sfc_string_free(json);
    json = NULL;
    CHECK_STATUS(sfc_client_query(obs, "{\"group\": 5}", &json), SFC_STATUS_INVALID_JSON);
    CHECK_ERROR_MENTIONS("filter");
    CHECK(json == NULL);

    CHECK_OK(sfc_client_stop(svc));
    sfc_client_free(svc);
    CHECK_OK(sfc_client_stop(obs));
    sfc_client_free(obs);
    return 1;
}

static int test_watch_sees_join_health_and_leave(void) {
    sfc_client *obs = start_observer();
    sfc_client *svc = NULL;
    sfc_watch *w = NULL;
    char *json = NULL;
    CHECK(obs != NULL);
    CHECK_OK(sfc_client_watch(obs, watch_filter, false, &w));
    CHECK(wait_event(obs, SFC_EVENT_KIND_CONNECTED, 20));
    svc = start_service(group_watch, "w-one");
    CHECK(svc != NULL);
    CHECK(wait_watch(w, "\"kind\":\"joined\"", 20));
    CHECK_OK(sfc_client_set_health(svc, SFC_HEALTH_CRITICAL, "disk full"));
    CHECK(wait_watch(w, "\"kind\":\"health-changed\"", 20));
    CHECK_OK(sfc_client_stop(svc));
    CHECK(wait_watch(w, "\"kind\":\"left\"", 20));
    sfc_client_free(svc);
    /* Nothing else is going on in the group: a zero timeout returns at once. */
    CHECK_STATUS(sfc_watch_next(w, 0, &json), SFC_STATUS_NO_EVENT);
    CHECK(json == NULL);
    /* Once the client stops, the watch ends. */
    CHECK_OK(sfc_client_stop(obs));
    CHECK_STATUS(sfc_watch_next(w, 2000, &json), SFC_STATUS_STOPPED);
    sfc_watch_free(w);
    sfc_client_free(obs);
    return 1;
}

static int test_double_stop_and_use_after_stop(void) {
    sfc_client *svc = start_service(group_stop, "s-one");
    sfc_event *ev = NULL;
    char *json = NULL;
    sfc_watch *w = NULL;
    CHECK(svc != NULL);
    CHECK_OK(sfc_client_wait_connected(svc, 10000));
    CHECK_OK(sfc_client_stop(svc));
    CHECK_OK(sfc_client_stop(svc)); /* documented: a second stop does nothing */
    CHECK_STATUS(sfc_client_set_gauge(svc, "x", 1.0), SFC_STATUS_STOPPED);
    CHECK_STATUS(sfc_client_set_health(svc, SFC_HEALTH_PASSING, NULL), SFC_STATUS_STOPPED);
    CHECK_STATUS(sfc_client_lookup(svc, group_stop, false, NULL, NULL, &json, NULL), SFC_STATUS_STOPPED);
    CHECK_STATUS(sfc_client_watch(svc, NULL, false, &w), SFC_STATUS_STOPPED);
    CHECK(w == NULL);
    CHECK_STATUS(sfc_client_respond(svc, 1, true, "{}"), SFC_STATUS_STOPPED);
    /* Queued events can still be taken; then next_event says stopped, without waiting. */
    for (int i = 0; i < 100; i++) {
        sfc_status s = sfc_client_next_event(svc, 5000, &ev);
        if (s == SFC_STATUS_STOPPED) {
            break;
        }
        CHECK_OK(s);
        sfc_event_free(ev);
        ev = NULL;
    }
    CHECK_STATUS(sfc_client_next_event(svc, 0, &ev), SFC_STATUS_STOPPED);
    sfc_client_free(svc);
    return 1;
}

/* Freeing a client that was not stopped closes its connection at once, also while a watch of
 * it is alive (the watch kept the session reporting until it was freed): an observer sees the
 * instance go offline, and the orphaned watch reports stopped. */
static int test_free_without_stop(void) {
    sfc_client *obs = start_observer();
    sfc_client *svc = NULL;
    sfc_watch *seen = NULL;
    sfc_watch *w = NULL;
    char filter[128];
    char *json = NULL;
    CHECK(obs != NULL);
    snprintf(filter, sizeof filter, "{\"group\":\"%s\"}", group_free);
    CHECK_OK(sfc_client_watch(obs, filter, false, &seen));
    CHECK(wait_event(obs, SFC_EVENT_KIND_CONNECTED, 20));
    svc = start_service(group_free, "f-one");
    CHECK(svc != NULL);
    CHECK_OK(sfc_client_wait_connected(svc, 10000));
    CHECK(wait_watch(seen, "\"kind\":\"joined\"", 20));
    CHECK_OK(sfc_client_watch(svc, NULL, true, &w));
    /* The watch outlives the client handle and is freed after it. */
    sfc_client_free(svc);
    CHECK(wait_watch(seen, "\"kind\":\"offline\"", 20));
    CHECK_STATUS(sfc_watch_next(w, 5000, &json), SFC_STATUS_STOPPED);
    CHECK(json == NULL);
    sfc_watch_free(w);
    sfc_watch_free(seen);
    CHECK_OK(sfc_client_stop(obs));
    sfc_client_free(obs);
    return 1;
}

/* The header says gauge names with a control character, a quote, a backslash or '/' are
 * refused; runtime metric names follow the same rule. */
static int test_bad_gauge_names_are_refused(void) {
    const char *bad[] = {"tab\there", "new\nline", "quo\"te", "back\\slash", "sla/sh"};
    sfc_client *svc = start_service("c-gauge-names", "g-one");
    size_t i;
    CHECK(svc != NULL);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(sfc_client_set_gauge(svc, bad[i], 1.0), SFC_STATUS_INVALID_ARGUMENT);
        CHECK_ERROR_MENTIONS("gauge name");
    }
    CHECK_OK(sfc_client_set_gauge(svc, "queue_depth.eu-1", 1.0));
    CHECK_STATUS(sfc_client_set_runtime_metrics(svc, "{\"heap/bytes\": 1}"), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("heap/bytes");
    CHECK_STATUS(sfc_client_set_runtime_metrics(svc, "{\"tab\\tname\": 1}"), SFC_STATUS_INVALID_ARGUMENT);
    {
        sfc_status s = sfc_client_stop(svc);
        CHECK(s == SFC_STATUS_OK || s == SFC_STATUS_TIMEOUT);
    }
    sfc_client_free(svc);
    return 1;
}

/* A group sfc_client_start refuses is refused by lookup too (it was looked up and found
 * empty). */
static int test_lookup_refuses_what_start_refuses(void) {
    const char *bad[] = {"a/b", "ctl\001char"};
    sfc_client *obs = start_observer();
    char *json = NULL;
    size_t i;
    CHECK(obs != NULL);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sfc_config *c = service_config(bad[i], "l-one");
        sfc_client *svc = NULL;
        CHECK(c != NULL);
        CHECK_STATUS(sfc_client_start(c, &svc), SFC_STATUS_INVALID_ARGUMENT);
        CHECK_ERROR_MENTIONS("group");
        sfc_config_free(c);
        CHECK_STATUS(sfc_client_lookup(obs, bad[i], false, NULL, NULL, &json, NULL), SFC_STATUS_INVALID_ARGUMENT);
        CHECK_ERROR_MENTIONS("group");
        CHECK(json == NULL);
    }
    CHECK_OK(sfc_client_stop(obs));
    sfc_client_free(obs);
    return 1;
}

struct watch_waiter {
    sfc_watch *watch;
    sfc_status status;
};

static void *watch_forever_thread(void *arg) {
    struct watch_waiter *w = arg;
    char *json = NULL;
    do {
        sfc_string_free(json);
        json = NULL;
        w->status = sfc_watch_next(w->watch, SFC_WAIT_FOREVER, &json);
    } while (w->status == SFC_STATUS_OK);
    return NULL;
}

/* SFC_WAIT_FOREVER has no time limit: sfc_watch_cancel from another thread ends the wait. */
static int test_cancel_ends_a_watch_waiting_forever(void) {
    sfc_client *obs = start_observer();
    struct watch_waiter w = {NULL, SFC_STATUS_OK};
    pthread_t t;
    char *json = NULL;
    CHECK(obs != NULL);
    CHECK_OK(sfc_client_watch(obs, "{\"group\":\"c-nobody-here\"}", false, &w.watch));
    CHECK(pthread_create(&t, NULL, watch_forever_thread, &w) == 0);
    sfc_watch_cancel(w.watch);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_STATUS(w.status, SFC_STATUS_STOPPED);
    CHECK_STATUS(sfc_watch_next(w.watch, 0, &json), SFC_STATUS_STOPPED);
    sfc_watch_cancel(w.watch); /* twice is fine */
    sfc_watch_cancel(NULL);
    sfc_watch_free(w.watch);
    CHECK_OK(sfc_client_stop(obs));
    sfc_client_free(obs);
    return 1;
}

/* A registry certificate the configured CA does not vouch for: the error event says so, with
 * the status a call failing that way returns ("tls"). */
static int test_untrusted_registry_is_a_tls_error_event(void) {
    const char *other_ca = getenv("SFC_TEST_OTHER_CA");
    sfc_config *c = sfc_config_new_observer();
    sfc_client *obs = NULL;
    int seen = 0;
    CHECK(other_ca != NULL);
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_add_registry(c, registry));
    CHECK_OK(sfc_config_set_ca(c, other_ca));
    CHECK_OK(sfc_config_set_stop_timeout_ms(c, 500));
    CHECK_OK(sfc_client_start(c, &obs));
    sfc_config_free(c);
    for (int i = 0; i < 20 && !seen; i++) {
        sfc_event *ev = NULL;
        sfc_status s = sfc_client_next_event(obs, 1000, &ev);
        if (s == SFC_STATUS_OK) {
            if (ev->kind == SFC_EVENT_KIND_ERROR) {
                seen = 1;
                if (strstr(ev->json, "\"status\":\"tls\"") == NULL) {
                    fprintf(stderr, "  error event: %s\n", ev->json);
                    seen = -1;
                }
            }
            sfc_event_free(ev);
        } else {
            CHECK_STATUS(s, SFC_STATUS_NO_EVENT);
        }
    }
    CHECK(seen == 1);
    {
        sfc_status s = sfc_client_stop(obs);
        CHECK(s == SFC_STATUS_OK || s == SFC_STATUS_TIMEOUT);
    }
    sfc_client_free(obs);
    return 1;
}

struct waiter {
    sfc_client *client;
    sfc_status status;
};

static void *wait_connected_thread(void *arg) {
    struct waiter *w = arg;
    w->status = sfc_client_wait_connected(w->client, 20000);
    return NULL;
}

static int test_stop_ends_wait_connected(void) {
    /* No registry behind this address: the wait can only end by the stop (or its timeout). */
    sfc_config *c = sfc_config_new();
    struct waiter w = {NULL, SFC_STATUS_OK};
    pthread_t t;
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_add_registry(c, "127.0.0.1:9"));
    CHECK_OK(sfc_config_set_ca(c, ca));
    CHECK_OK(sfc_config_set_group(c, "c-wait"));
    CHECK_OK(sfc_config_set_stop_timeout_ms(c, 500));
    CHECK_OK(sfc_client_start(c, &w.client));
    sfc_config_free(c);
    CHECK(pthread_create(&t, NULL, wait_connected_thread, &w) == 0);
    /* Whether the thread is already waiting or not, it must answer stopped, not timeout. */
    sfc_client_stop(w.client);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_STATUS(w.status, SFC_STATUS_STOPPED);
    sfc_client_free(w.client);
    return 1;
}

/* ---- the legacy fallback, against a registry that predates protocol v1 -------------- */

/* The Node.js fixture run.sh starts (bindings/node/tests/support/legacy-registry.js): it
 * prints `report {...}` for every document it recorded and `refused ...` for every connection
 * that ended before its TLS handshake completed, and it exits on any other bytes. */

/* How many lines of the fixture's log contain both `a` and `b` (b may be NULL); -1 when the
 * log cannot be read. */
static int legacy_log_count(const char *a, const char *b) {
    const char *path = getenv("SFC_TEST_LEGACY_LOG");
    FILE *f = path != NULL ? fopen(path, "r") : NULL;
    char line[8192];
    int n = 0;
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        if (strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL)) {
            n++;
        }
    }
    fclose(f);
    return n;
}

/* Waits (bounded: 30 s, Valgrind is slow) until the fixture's log has more than `above` lines
 * with `a` and `b`; returns that count, or -1. */
static int legacy_log_wait(const char *a, const char *b, int above) {
    struct timespec tick = {0, 100 * 1000 * 1000};
    for (int i = 0; i < 300; i++) {
        int n = legacy_log_count(a, b);
        if (n > above) {
            return n;
        }
        nanosleep(&tick, NULL);
    }
    return -1;
}

/* The fixture is still running (it exits on bytes that are not one JSON document). */
static int legacy_registry_alive(void) {
    const char *pid = getenv("SFC_TEST_LEGACY_PID");
    return pid != NULL && kill((pid_t)atol(pid), 0) == 0;
}

static sfc_config *legacy_config(const char *group, bool legacy) {
    sfc_config *c = sfc_config_new();
    const char *addr = getenv("SFC_TEST_LEGACY_REGISTRY");
    if (addr == NULL || sfc_config_ignore_env(c) != SFC_STATUS_OK || sfc_config_add_registry(c, addr) != SFC_STATUS_OK ||
        sfc_config_set_ca(c, ca) != SFC_STATUS_OK || sfc_config_set_group(c, group) != SFC_STATUS_OK ||
        sfc_config_set_service(c, "c-billing") != SFC_STATUS_OK || sfc_config_set_hostname(c, "c-legacy-host") != SFC_STATUS_OK ||
        sfc_config_set_interval_ms(c, 500) != SFC_STATUS_OK || sfc_config_set_stop_timeout_ms(c, 1000) != SFC_STATUS_OK ||
        (legacy && sfc_config_set_legacy(c, true) != SFC_STATUS_OK)) {
        sfc_config_free(c);
        return NULL;
    }
    return c;
}

/* Legacy on: the registry receives {"action":"HEALTH","payload":...} documents with our
 * identity, the client counts as connected with session 0, lookups are unreachable, and stop
 * returns at once. */
static int test_legacy_reports_to_a_registry_that_predates_v1(void) {
    char group[64], key[96], connected_json[128];
    sfc_config *c;
    sfc_client *client = NULL;
    int seen = 0;
    char *json = NULL;
    snprintf(group, sizeof group, "c-legacy-%ld", (long)getpid());
    snprintf(key, sizeof key, "\"groupingKey\":\"%s\"", group);
    c = legacy_config(group, true);
    CHECK(c != NULL);
    CHECK_OK(sfc_client_start(c, &client));
    sfc_config_free(c);
    CHECK(legacy_log_wait("report {\"action\":\"HEALTH\"", key, 0) >= 1);
    CHECK(legacy_log_count(key, "\"serviceName\":\"c-billing\"") >= 1);
    CHECK(legacy_log_count(key, "\"hostname\":\"c-legacy-host\"") >= 1);
    /* Connected, with session 0: no v1 session. */
    snprintf(connected_json, sizeof connected_json, "\"session\":0");
    for (int i = 0; i < 20 && !seen; i++) {
        sfc_event *ev = NULL;
        sfc_status s = sfc_client_next_event(client, 1000, &ev);
        if (s == SFC_STATUS_OK) {
            if (ev->kind == SFC_EVENT_KIND_CONNECTED) {
                seen = strstr(ev->json, connected_json) != NULL ? 1 : -1;
                if (seen < 0) {
                    fprintf(stderr, "  connected event: %s\n", ev->json);
                }
            }
            sfc_event_free(ev);
        } else {
            CHECK_STATUS(s, SFC_STATUS_NO_EVENT);
        }
    }
    CHECK(seen == 1);
    CHECK_STATUS(sfc_client_wait_connected(client, 1000), SFC_STATUS_OK);
    /* Lookups need protocol v1. */
    CHECK_STATUS(sfc_client_lookup(client, "anything", false, NULL, NULL, &json, NULL), SFC_STATUS_UNREACHABLE);
    CHECK_ERROR_MENTIONS("predates protocol v1");
    /* Reports go on, one connection each. */
    CHECK(legacy_log_wait("report {\"action\":\"HEALTH\"", key, 1) >= 2);
    CHECK_OK(sfc_client_stop(client));
    sfc_client_free(client);
    CHECK(legacy_registry_alive());
    return 1;
}

/* Legacy off: an error event (status protocol, code unsupported-version) that says the
 * registry predates protocol v1, and the registry receives nothing after the handshake: the
 * client abandons it (the fixture logs `refused`) and the fixture, which exits on any bytes
 * that are not one JSON document, is still up and recorded no report from us. */
static int test_v1_only_client_refuses_a_registry_that_predates_v1(void) {
    char group[64], key[96];
    sfc_config *c;
    sfc_client *client = NULL;
    int seen = 0;
    int refused_before = legacy_log_count("refused", NULL);
    snprintf(group, sizeof group, "c-v1-only-%ld", (long)getpid());
    snprintf(key, sizeof key, "\"groupingKey\":\"%s\"", group);
    CHECK(refused_before >= 0);
    c = legacy_config(group, false);
    CHECK(c != NULL);
    CHECK_OK(sfc_client_start(c, &client));
    sfc_config_free(c);
    for (int i = 0; i < 30 && seen == 0; i++) {
        sfc_event *ev = NULL;
        sfc_status s = sfc_client_next_event(client, 1000, &ev);
        if (s == SFC_STATUS_OK) {
            if (ev->kind == SFC_EVENT_KIND_ERROR) {
                seen = strstr(ev->json, "\"status\":\"protocol\"") != NULL &&
                               strstr(ev->json, "\"code\":\"unsupported-version\"") != NULL &&
                               strstr(ev->json, "predates protocol v1") != NULL
                           ? 1
                           : -1;
            } else if (ev->kind == SFC_EVENT_KIND_CONNECTED) {
                seen = -1;
            }
            if (seen < 0) {
                fprintf(stderr, "  event %d: %s\n", (int)ev->kind, ev->json);
            }
            sfc_event_free(ev);
        } else {
            CHECK_STATUS(s, SFC_STATUS_NO_EVENT);
        }
    }
    CHECK(seen == 1);
    CHECK(legacy_log_wait("refused", NULL, refused_before) > refused_before);
    {
        sfc_status s = sfc_client_stop(client);
        CHECK(s == SFC_STATUS_OK || s == SFC_STATUS_TIMEOUT);
    }
    sfc_client_free(client);
    CHECK(legacy_registry_alive());
    CHECK(legacy_log_count(key, NULL) == 0);
    return 1;
}

/* The legacy fallback needs TLS and a service. */
static int test_legacy_needs_tls_and_a_service(void) {
    sfc_config *c = sfc_config_new_observer();
    sfc_client *client = NULL;
    CHECK_STATUS(sfc_config_set_legacy(NULL, true), SFC_STATUS_NULL_ARGUMENT);
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_add_registry(c, registry));
    CHECK_OK(sfc_config_set_ca(c, ca));
    CHECK_OK(sfc_config_set_legacy(c, true));
    CHECK_STATUS(sfc_client_start(c, &client), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("legacy");
    sfc_config_free(c);
    c = sfc_config_new();
    CHECK_OK(sfc_config_ignore_env(c));
    CHECK_OK(sfc_config_add_registry(c, registry));
    CHECK_OK(sfc_config_set_group(c, "c-legacy-plain"));
    CHECK_OK(sfc_config_set_insecure_plaintext(c, true));
    CHECK_OK(sfc_config_set_legacy(c, true));
    CHECK_STATUS(sfc_client_start(c, &client), SFC_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("legacy");
    /* Turned off again, the same config starts. */
    CHECK_OK(sfc_config_set_legacy(c, false));
    CHECK_OK(sfc_client_start(c, &client));
    sfc_config_free(c);
    sfc_client_free(client);
    return 1;
}

int main(void) {
    registry = getenv("SFC_TEST_REGISTRY");
    ca = getenv("SFC_TEST_CA");
    if (registry == NULL || ca == NULL) {
        fprintf(stderr, "SFC_TEST_REGISTRY and SFC_TEST_CA must be set (tests/c/run.sh sets them)\n");
        return 2;
    }
    name_groups();
    run("version macros match the library", test_version_macros_match_library);
    run("null arguments are errors", test_null_arguments_are_errors);
    run("non-utf-8 strings are errors", test_non_utf8_strings_are_errors);
    run("bad settings name the setting", test_bad_settings_name_the_setting);
    run("bad ca file fails at start", test_bad_ca_file_fails_at_start);
    run("registry down", test_registry_down);
    run("register, report, health, gauge, lookup", test_register_report_health_gauge_lookup);
    run("watch sees join, health and leave", test_watch_sees_join_health_and_leave);
    run("double stop and use after stop", test_double_stop_and_use_after_stop);
    run("free without stop closes the connection, also with a watch alive", test_free_without_stop);
    run("bad gauge names are refused", test_bad_gauge_names_are_refused);
    run("lookup refuses a group start refuses", test_lookup_refuses_what_start_refuses);
    run("cancel ends a watch waiting forever", test_cancel_ends_a_watch_waiting_forever);
    run("untrusted registry is a tls error event", test_untrusted_registry_is_a_tls_error_event);
    run("stop ends wait_connected", test_stop_ends_wait_connected);
    run("legacy on: reports in the original format to a registry that predates v1",
        test_legacy_reports_to_a_registry_that_predates_v1);
    run("legacy off: refuses a registry that predates v1 and sends it nothing",
        test_v1_only_client_refuses_a_registry_that_predates_v1);
    run("legacy needs tls and a service", test_legacy_needs_tls_and_a_service);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
