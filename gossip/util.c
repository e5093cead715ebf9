/*
 * util.c - gossip identity and address helpers, error strings.
 */
#include "gossip/gossip.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

const char *gsp_strerror(int err)
{
    return pmm_strerror(err);
}

/* ---- addresses ----------------------------------------------------------- */

/* Longest valid input: "[" 45-char IPv6 (with embedded IPv4) "]:65535". */
#define ADDR_STR_MAX 64

/* Decimal port, 1..65535, digits only (no sign, no spaces). */
static int parse_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 5)
            return -EINVAL;
        v = v * 10 + (unsigned long)(s[n] - '0');
    }
    if (n == 0 || v == 0 || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int gsp_addr_parse(gsp_addr *out, const char *str, uint16_t default_port)
{
    char host[ADDR_STR_MAX + 1];
    const char *port_str = NULL;
    gsp_addr a;
    size_t len;

    if (out == NULL || str == NULL)
        return -EINVAL;
    len = strnlen(str, ADDR_STR_MAX + 1);
    if (len == 0 || len > ADDR_STR_MAX)
        return -EINVAL;

    memset(&a, 0, sizeof(a));
    a.port = default_port;

    if (str[0] == '[') {
        /* "[v6]" or "[v6]:port" */
        const char *close = memchr(str, ']', len);
        size_t hlen;

        if (close == NULL)
            return -EINVAL;
        hlen = (size_t)(close - str) - 1;
        if (hlen == 0)
            return -EINVAL;
        memcpy(host, str + 1, hlen);
        host[hlen] = '\0';
        if (close[1] == ':')
            port_str = close + 2;
        else if (close[1] != '\0')
            return -EINVAL;
        if (inet_pton(AF_INET6, host, a.ip) != 1)
            return -EINVAL;
        a.family = 6;
    } else {
        const char *colon = memchr(str, ':', len);
        size_t rest = colon != NULL ? len - (size_t)(colon - str) - 1 : 0;

        memcpy(host, str, len);
        host[len] = '\0';
        if (colon != NULL && memchr(colon + 1, ':', rest) == NULL) {
            /* exactly one colon: "v4:port" */
            host[colon - str] = '\0';
            port_str = colon + 1;
            if (inet_pton(AF_INET, host, a.ip) != 1)
                return -EINVAL;
            a.family = 4;
        } else if (colon != NULL) {
            /* two or more colons: a bare IPv6 address, default port */
            if (inet_pton(AF_INET6, host, a.ip) != 1)
                return -EINVAL;
            a.family = 6;
        } else {
            if (inet_pton(AF_INET, host, a.ip) != 1)
                return -EINVAL;
            a.family = 4;
        }
    }

    if (port_str != NULL && parse_port(port_str, &a.port) != 0)
        return -EINVAL;
    *out = a;
    return 0;
}

char *gsp_addr_ip_str(const gsp_addr *a, char *buf, size_t len)
{
    char tmp[INET6_ADDRSTRLEN];
    const char *s = NULL;

    if (buf == NULL || len == 0)
        return buf;
    if (a != NULL && a->family == 4)
        s = inet_ntop(AF_INET, a->ip, tmp, sizeof(tmp));
    else if (a != NULL && a->family == 6)
        s = inet_ntop(AF_INET6, a->ip, tmp, sizeof(tmp));
    snprintf(buf, len, "%s", s != NULL ? s : "(none)");
    return buf;
}

char *gsp_addr_str(const gsp_addr *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (buf == NULL || len == 0)
        return buf;
    if (a == NULL || (a->family != 4 && a->family != 6)) {
        snprintf(buf, len, "(none)");
        return buf;
    }
    gsp_addr_ip_str(a, ip, sizeof(ip));
    if (a->family == 6)
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)a->port);
    else
        snprintf(buf, len, "%s:%u", ip, (unsigned)a->port);
    return buf;
}

bool gsp_addr_eq(const gsp_addr *a, const gsp_addr *b)
{
    size_t n;

    if (a == NULL || b == NULL)
        return a == b;
    if (a->family != b->family || a->port != b->port)
        return false;
    n = a->family == 4 ? 4 : a->family == 6 ? 16 : 0;
    return memcmp(a->ip, b->ip, n) == 0;
}

/* ---- node ids ------------------------------------------------------------ */

int gsp_id_parse(gsp_id *out, const char *hex32)
{
    gsp_id id;

    if (out == NULL || hex32 == NULL)
        return -EINVAL;
    if (strnlen(hex32, 2 * GSP_ID_LEN + 1) != 2 * GSP_ID_LEN ||
        pmm_hex_decode(hex32, GSP_ID_LEN, id.b) != 0)
        return -EINVAL;
    *out = id;
    return 0;
}

char *gsp_id_str(const gsp_id *id, char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return buf;
    if (id == NULL || len < 2 * GSP_ID_LEN + 1) {
        buf[0] = '\0';
        return buf;
    }
    return pmm_hex_encode(id->b, GSP_ID_LEN, buf, false);
}
