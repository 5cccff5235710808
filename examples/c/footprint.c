/*
 * What the client costs a C host: a process that does one small piece of work a second, built
 * twice from this file, with the client (reporting once a second) and without it
 * (-DSFC_FOOTPRINT_NO_CLIENT). After a warm-up it measures CPU time (getrusage) over the
 * run and resident memory (VmRSS in /proc/self/status) at the end, and prints one line:
 *   footprint mode=client seconds=60 cpu_ms=12.3 cpu_ms_per_s=0.205 rss_kib=5120
 * examples/c/footprint.sh runs both and prints the difference (make bench-footprint-c).
 * Settings: SFC_REGISTRY and SFC_CA from the environment; argv[1] = seconds (default 60);
 * SFC_FOOTPRINT_NO_METRICS=1 reports without sampled host/process metrics (attribution).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifndef SFC_FOOTPRINT_NO_CLIENT
#include "sfc.h"
#endif

static double cpu_ms(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

static long rss_kib(void) {
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kib;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The host's own work: a little arithmetic once a second. */
static volatile double sink;
static void work(void) {
    for (int i = 0; i < 1000; i++) {
        sink += (double)i * 0.5;
    }
}

static void sleep_until(double t) {
    double d = t - now_s();
    if (d > 0) {
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 60;
    const int warmup = 5;
    const char *mode = "baseline";
    double start, cpu0, cpu1;
#ifndef SFC_FOOTPRINT_NO_CLIENT
    sfc_client *client = NULL;
    sfc_config *config = sfc_config_new();
    mode = "client";
    if (sfc_config_set_group(config, "footprint") != SFC_STATUS_OK ||
        sfc_config_set_interval_ms(config, 1000) != SFC_STATUS_OK ||
        /* For attribution: SFC_FOOTPRINT_NO_METRICS=1 turns off host/process sampling. */
        sfc_config_set_sample_metrics(config, getenv("SFC_FOOTPRINT_NO_METRICS") == NULL) != SFC_STATUS_OK ||
        sfc_client_start(config, &client) != SFC_STATUS_OK) {
        fprintf(stderr, "start failed: %s\n", sfc_last_error_message());
        return 1;
    }
    sfc_config_free(config);
    if (sfc_client_wait_connected(client, 10000) != SFC_STATUS_OK) {
        fprintf(stderr, "not connected: %s\n", sfc_last_error_message());
        return 1;
    }
#endif
    start = now_s();
    for (int i = 0; i < warmup; i++) {
        work();
        sleep_until(start + i + 1);
    }
    cpu0 = cpu_ms();
    start = now_s();
    for (int i = 0; i < seconds; i++) {
        work();
        sleep_until(start + i + 1);
    }
    cpu1 = cpu_ms();
    printf("footprint mode=%s seconds=%d cpu_ms=%.1f cpu_ms_per_s=%.3f rss_kib=%ld\n", mode, seconds,
           cpu1 - cpu0, (cpu1 - cpu0) / seconds, rss_kib());
#ifndef SFC_FOOTPRINT_NO_CLIENT
    sfc_client_stop(client);
    sfc_client_free(client);
#endif
    return 0;
}
