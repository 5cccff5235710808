/*
 * tests/dist: a program that links libsfc.a and the system's libzstd. libsfc carries its own
 * zstd (a different version), made local to the library, so every ZSTD_* call here must reach
 * the system library, whatever the link order: ZSTD_versionNumber() is the version of the
 * system's zstd.h, and a round trip through the system's compressor works. sfc_version() is
 * libsfc's.
 */
#include <stdio.h>
#include <string.h>

#include <sfc.h>
#include <zstd.h>

int main(void) {
    unsigned got = ZSTD_versionNumber();
    if (got != ZSTD_VERSION_NUMBER) {
        fprintf(stderr, "ZSTD_versionNumber() is %u, the system's zstd.h says %u: libsfc's zstd won\n",
                got, (unsigned)ZSTD_VERSION_NUMBER);
        return 1;
    }
    if (strcmp(sfc_version(), SFC_VERSION) != 0) {
        fprintf(stderr, "sfc_version() is %s, the header says %s\n", sfc_version(), SFC_VERSION);
        return 1;
    }
    char src[4096], packed[8192], back[4096];
    for (size_t i = 0; i < sizeof src; i++) {
        src[i] = (char)("service fleet control "[i % 22]);
    }
    size_t n = ZSTD_compress(packed, sizeof packed, src, sizeof src, 3);
    if (ZSTD_isError(n)) {
        fprintf(stderr, "ZSTD_compress: %s\n", ZSTD_getErrorName(n));
        return 1;
    }
    size_t m = ZSTD_decompress(back, sizeof back, packed, n);
    if (ZSTD_isError(m) || m != sizeof src || memcmp(src, back, m) != 0) {
        fprintf(stderr, "ZSTD round trip failed\n");
        return 1;
    }
    printf("system zstd %u (%zu -> %zu bytes), libsfc %s\n", got, sizeof src, n, sfc_version());
    return 0;
}
