/*
 * addr.c - IP addresses to and from socket addresses (common.h).
 */
#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

socklen_t pmm_sockaddr_raw(struct sockaddr_storage *ss, int family,
                           const uint8_t *ip, uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    if (family == 6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, ip, 16);
        return sizeof(*s6);
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, ip, 4);
    return sizeof(*s4);
}

int pmm_sockaddr_ip(struct sockaddr_storage *ss, const char *ip,
                    uint16_t port)
{
    uint8_t b[16];

    memset(ss, 0, sizeof(*ss));
    if (ip == NULL)
        return -EINVAL;
    if (inet_pton(AF_INET, ip, b) == 1) {
        pmm_sockaddr_raw(ss, 4, b, port);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, b) == 1) {
        pmm_sockaddr_raw(ss, 6, b, port);
        return 0;
    }
    return -EINVAL;
}

char *pmm_sockaddr_ip_str(const struct sockaddr *sa, char *buf, size_t len)
{
    if (len == 0)
        return buf;
    buf[0] = '\0';
    if (sa == NULL)
        return buf;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf,
                  (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
                  buf, (socklen_t)len);
    return buf;
}
