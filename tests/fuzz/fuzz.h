/*
 * fuzz.h - shared bits of the fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Every target defines LLVMFuzzerTestOneInput and drives the real parsing
 * code. The same file is linked with libFuzzer (make fuzz, clang) or with
 * tests/fuzz/replay.c (make check, any compiler), which runs it over the
 * seed corpus in tests/fuzz/corpus/<target>/.
 *
 * Multi-frame inputs (gossip, store) are a sequence of frames, each a
 * 2-byte little-endian length and that many bytes; a short or overlong
 * last frame takes what is left. tests/fuzz/gen_corpus.c writes seeds in
 * this format.
 */
#ifndef PMGCM_TESTS_FUZZ_H
#define PMGCM_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Identities and key shared by the targets and the corpus generator. */
#define FZ_LABEL "fuzz"
static const uint8_t FZ_KEY[32] = {
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
    0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f};
/* the fuzzed core's id and a peer's */
#define FZ_SELF_ID_BYTE 0x5e
#define FZ_PEER_ID_BYTE 0x9a

/* Gossip target modes (first input byte, modulo FZ_GOSSIP_MODES). */
enum {
    FZ_G_UDP_PLAIN = 0,   /* plaintext core: frames are Packets */
    FZ_G_UDP_OPENED = 1,  /* keyed core; frames sealed here: after decryption */
    FZ_G_UDP_SEALED = 2,  /* keyed core; frames fed raw: before decryption */
    FZ_G_STREAM_PLAIN = 3,/* plaintext core: frames are Stream requests */
    FZ_G_STREAM_OPENED = 4,/* keyed core; Stream requests sealed here */
    FZ_G_RESULT = 5,      /* keyed core joins; frames sealed here are the
                             replies to its push-pull requests */
    FZ_G_STREAM_SEALED = 6,/* keyed core; Stream requests fed raw */
    FZ_GOSSIP_MODES = 7,
};

/* Takes the next frame off (*p, *n). Returns 0 when nothing is left. */
static inline int fz_frame(const uint8_t **p, size_t *n, const uint8_t **f,
                           size_t *flen)
{
    if (*n == 0) return 0;
    size_t want;
    if (*n < 2) {
        want = *n;
    } else {
        want = (size_t)(*p)[0] | ((size_t)(*p)[1] << 8);
        *p += 2;
        *n -= 2;
        if (want > *n) want = *n;
    }
    *f = *p;
    *flen = want;
    *p += want;
    *n -= want;
    return 1;
}

#endif
