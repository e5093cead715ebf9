/*
 * udpblast - send garbage at a pmgclusterd gossip port (test tool only).
 *
 *   udpblast [-n COUNT] [-r RATE] [-s SEED] [--tcp] HOST PORT
 *
 * UDP (default): COUNT datagrams (5000) at about RATE per second (5000),
 * random bytes of random sizes: a fifth truncated (0..40 bytes), most up to
 * 1500 bytes, some up to 9000; half start with a small "version" byte so
 * they look like a sealed packet and reach the decryption path.
 * --tcp: COUNT connections (default 50), each sending a random-length run of
 * random bytes (some behind a huge or a plausible length prefix, some
 * nothing at all) and closing.
 * Exits 0 when everything was sent (ECONNREFUSED on TCP also counts as
 * sent: that is the target's business), 2 on usage or socket errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill(uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)rnd();
}

static void sleep_until(const struct timespec *t0, double at_s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double el = (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
    if (at_s > el) {
        double d = at_s - el;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int blast_udp(const struct sockaddr_in *to, long count, long rate)
{
    static uint8_t buf[9000];
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("udpblast: socket");
        return 2;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0, errs = 0;
    for (long i = 0; i < count; i++) {
        size_t len;
        uint64_t kind = rnd() % 10;
        if (kind < 2)
            len = (size_t)(rnd() % 41);
        else if (kind < 9)
            len = (size_t)(rnd() % 1501);
        else
            len = (size_t)(rnd() % sizeof(buf) + 1);
        fill(buf, len);
        if (len > 0 && (rnd() & 1))
            buf[0] = (uint8_t)(rnd() % 4);
        if (sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof(*to)) < 0)
            errs++;
        else
            sent++;
        if (rate > 0)
            sleep_until(&t0, (double)(i + 1) / (double)rate);
    }
    close(fd);
    printf("udpblast: sent %ld datagrams (%ld send errors)\n", sent, errs);
    return 0;
}

static int blast_tcp(const struct sockaddr_in *to, long count, long rate)
{
    static uint8_t buf[70000];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long conns = 0, refused = 0, other = 0;
    for (long i = 0; i < count; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("udpblast: socket");
            return 2;
        }
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        int rc = connect(fd, (const struct sockaddr *)to, sizeof(*to));
        if (rc < 0 && errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t el = sizeof(err);
            if (poll(&p, 1, 2000) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)
                rc = 0;
            else
                errno = err ? err : ETIMEDOUT;
        }
        if (rc < 0) {
            if (errno == ECONNREFUSED)
                refused++;
            else
                other++;
            close(fd);
            continue;
        }
        conns++;
        fcntl(fd, F_SETFL, fl);
        size_t len = 0;
        switch (rnd() % 5) {
        case 0: /* nothing at all */
            break;
        case 1: /* a huge length prefix, then a little garbage */
            buf[0] = buf[1] = buf[2] = buf[3] = 0xff;
            len = 4 + (size_t)(rnd() % 64);
            fill(buf + 4, len - 4);
            break;
        case 2: { /* a plausible length prefix, then less than it says */
            uint32_t claim = (uint32_t)(rnd() % 4096 + 64);
            uint32_t be = htonl(claim);
            memcpy(buf, &be, 4);
            len = 4 + (size_t)(rnd() % claim);
            fill(buf + 4, len - 4);
            break;
        }
        case 3: { /* a consistent length prefix over random bytes */
            uint32_t claim = (uint32_t)(rnd() % 4096 + 1);
            uint32_t be = htonl(claim);
            memcpy(buf, &be, 4);
            len = 4 + claim;
            fill(buf + 4, claim);
            break;
        }
        default: /* just random bytes */
            len = (size_t)(rnd() % sizeof(buf) + 1);
            fill(buf, len);
            break;
        }
        struct timeval tv = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        size_t off = 0;
        while (off < len) {
            ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(fd);
        if (rate > 0)
            sleep_until(&t0, (double)(i + 1) / (double)rate);
    }
    printf("udpblast: %ld tcp connections sent garbage (%ld refused, %ld other errors)\n",
           conns, refused, other);
    return other > count / 2 ? 2 : 0;
}

int main(int argc, char **argv)
{
    long count = -1, rate = -1;
    int tcp = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--tcp"))
            tcp = 1;
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            count = atol(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc)
            rate = atol(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc)
            rng_state = strtoull(argv[++i], NULL, 0);
        else
            break;
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: udpblast [-n COUNT] [-r RATE] [-s SEED] [--tcp] HOST PORT\n");
        return 2;
    }
    struct sockaddr_in to;
    memset(&to, 0, sizeof(to));
    to.sin_family = AF_INET;
    long port = atol(argv[i + 1]);
    if (inet_pton(AF_INET, argv[i], &to.sin_addr) != 1 || port <= 0 || port > 65535) {
        fprintf(stderr, "udpblast: bad address %s %s\n", argv[i], argv[i + 1]);
        return 2;
    }
    to.sin_port = htons((uint16_t)port);
    if (count < 0)
        count = tcp ? 50 : 5000;
    if (rate < 0)
        rate = tcp ? 100 : 5000;
    return tcp ? blast_tcp(&to, count, rate) : blast_udp(&to, count, rate);
}
