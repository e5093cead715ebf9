/*
 * hex.c - hexadecimal digits (common.h): the one decoder and encoder.
 */
#include "common/common.h"

#include <errno.h>

int pmm_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int pmm_hex_decode(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = pmm_hexval(s[2 * i]);
        int lo = hi < 0 ? -1 : pmm_hexval(s[2 * i + 1]);
        if (lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

char *pmm_hex_encode(const uint8_t *b, size_t n, char *out, bool upper)
{
    const char *d = upper ? "0123456789ABCDEF" : "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}
