/*
 * gspcraft - send well-formed gossip packets sealed under a given key (test
 * tool only: tests/integration/security.sh).
 *
 *   gspcraft [-n COUNT] KEYFILE LABEL HOST PORT
 *
 * Each of the COUNT datagrams (default 20) is a valid Packet (gossip.proto)
 * from a made-up node that announces a made-up member "intruder" alive at
 * 10.213.0.99:7946, with gen 1 and seq 1, 2, ..., sealed with the first key
 * of KEYFILE (gsp_keyring_load_file format) and LABEL as the cluster label.
 * Sealed under the cluster's key it would add "intruder" to the target's
 * member list; under any other key it must be dropped undecrypted.
 * Exits 0 when everything was sent, 2 on usage, key or socket errors.
 */
#include "gossip/gossip.h"
#include "gossip/gossip.pb-c.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long count = 20;
    int i = 1;
    if (i + 1 < argc && !strcmp(argv[i], "-n")) {
        count = atol(argv[i + 1]);
        i += 2;
    }
    if (argc - i != 4 || count < 1) {
        fprintf(stderr, "usage: gspcraft [-n COUNT] KEYFILE LABEL HOST PORT\n");
        return 2;
    }
    const char *keyfile = argv[i], *label = argv[i + 1];
    struct sockaddr_in to = {.sin_family = AF_INET};
    long port = atol(argv[i + 3]);
    if (inet_pton(AF_INET, argv[i + 2], &to.sin_addr) != 1 || port <= 0 ||
        port > 65535) {
        fprintf(stderr, "gspcraft: bad address %s %s\n", argv[i + 2],
                argv[i + 3]);
        return 2;
    }
    to.sin_port = htons((uint16_t)port);

    gsp_keyring *kr = gsp_keyring_new(label);
    int bad = 0;
    if (!kr || gsp_keyring_load_file(kr, keyfile, &bad) ||
        gsp_keyring_count(kr) == 0) {
        fprintf(stderr, "gspcraft: cannot load a key from %s\n", keyfile);
        return 2;
    }
    uint8_t from[GSP_ID_LEN], who[GSP_ID_LEN];
    uint8_t ip[4] = {10, 213, 0, 99};
    memset(from, 0xE1, sizeof(from));
    memset(who, 0xE2, sizeof(who));

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("gspcraft: socket");
        return 2;
    }
    for (long k = 0; k < count; k++) {
        Pmgcm__Gossip__Member m = PMGCM__GOSSIP__MEMBER__INIT;
        Pmgcm__Gossip__Member *mp = &m;
        Pmgcm__Gossip__Packet p = PMGCM__GOSSIP__PACKET__INIT;
        m.id.data = who;
        m.id.len = GSP_ID_LEN;
        m.state = GSP_ALIVE;
        m.gen = 1;
        m.ver = (uint64_t)k;
        m.name = "intruder";
        m.has_ip = 1;
        m.ip.data = ip;
        m.ip.len = 4;
        m.has_port = 1;
        m.port = 7946;
        p.from.data = from;
        p.from.len = GSP_ID_LEN;
        p.n_updates = 1;
        p.updates = &mp;
        p.has_gen = 1;
        p.gen = 1;
        p.has_seq = 1;
        p.seq = (uint64_t)k + 1;
        uint8_t plain[512], sealed[512 + GSP_SEAL_OVERHEAD];
        size_t pl = pmgcm__gossip__packet__get_packed_size(&p), sl;
        if (pl > sizeof(plain)) return 2;
        pmgcm__gossip__packet__pack(&p, plain);
        if (gsp_seal(kr, plain, pl, sealed, sizeof(sealed), &sl)) {
            fprintf(stderr, "gspcraft: seal failed\n");
            return 2;
        }
        if (sendto(fd, sealed, sl, 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
            perror("gspcraft: sendto");
            return 2;
        }
        usleep(2000);
    }
    close(fd);
    gsp_keyring_free(kr);
    return 0;
}
