/*
 * tests/dist: a C service built outside the checkout against an installed libsfc (pkg-config or
 * CMake). It checks that the library is the header's version, registers in GROUP as INSTANCE
 * with the registry at ADDR (trusting CA), prints "connected <group>/<instance>", and waits
 * until STOP_FILE exists (up to 60 s); then it leaves (sfc_client_stop), prints "stopped" and
 * exits 0.
 *
 *   client ADDR CA GROUP INSTANCE STOP_FILE
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sfc.h>

static int fail(const char *what, sfc_status s) {
    fprintf(stderr, "%s failed (%s): %s\n", what, sfc_status_name(s), sfc_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: client ADDR CA GROUP INSTANCE STOP_FILE\n");
        return 2;
    }
    if (strcmp(sfc_version(), SFC_VERSION) != 0) {
        fprintf(stderr, "libsfc is %s, the header %s\n", sfc_version(), SFC_VERSION);
        return 1;
    }
    sfc_config *config = sfc_config_new();
    sfc_client *client = NULL;
    sfc_status s;
    if ((s = sfc_config_ignore_env(config)) != SFC_STATUS_OK ||
        (s = sfc_config_add_registry(config, argv[1])) != SFC_STATUS_OK ||
        (s = sfc_config_set_ca(config, argv[2])) != SFC_STATUS_OK ||
        (s = sfc_config_set_group(config, argv[3])) != SFC_STATUS_OK ||
        (s = sfc_config_set_instance_id(config, argv[4])) != SFC_STATUS_OK ||
        (s = sfc_config_set_version(config, SFC_VERSION)) != SFC_STATUS_OK ||
        (s = sfc_config_set_interval_ms(config, 500)) != SFC_STATUS_OK) {
        sfc_config_free(config);
        return fail("configure", s);
    }
    s = sfc_client_start(config, &client);
    sfc_config_free(config);
    if (s != SFC_STATUS_OK) {
        return fail("start", s);
    }
    if ((s = sfc_client_wait_connected(client, 20000)) != SFC_STATUS_OK) {
        sfc_client_free(client);
        return fail("wait_connected", s);
    }
    sfc_client_set_health(client, SFC_HEALTH_PASSING, "dist test");
    printf("connected %s/%s libsfc %s\n", argv[3], argv[4], sfc_version());
    fflush(stdout);

    const struct timespec tick = {0, 100 * 1000 * 1000};
    for (int i = 0; i < 600 && access(argv[5], F_OK) != 0; i++) {
        nanosleep(&tick, NULL);
    }
    s = sfc_client_stop(client);
    sfc_client_free(client);
    if (s != SFC_STATUS_OK) {
        return fail("stop", s);
    }
    printf("stopped\n");
    return 0;
}
