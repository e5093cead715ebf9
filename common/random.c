/*
 * random.c - the process's one random generator (common.h pmm_random): an
 * mbedTLS CTR-DRBG seeded once from the system's entropy, reseeded with
 * the pid after a fork so a child never replays its parent's stream.
 * Thread safe (one mutex). Gossip nonces and keys, node ids, cluster
 * secrets and every TLS handshake draw from it.
 */
#include "common/common.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>

/* ---- the process-wide random source ----------------------------------------- */

static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context rng_entropy;
static mbedtls_ctr_drbg_context rng_drbg;
static bool rng_ready;
static pid_t rng_pid;

int pmm_random(void *buf, size_t len)
{
    static const char pers[] = "pmgcm random";
    uint8_t *p = buf;
    pid_t pid;
    int rc = 0;

    if (len == 0)
        return 0;
    if (buf == NULL)
        return -EINVAL;

    pthread_mutex_lock(&rng_lock);
    pid = getpid();
    if (!rng_ready) {
        mbedtls_entropy_init(&rng_entropy);
        mbedtls_ctr_drbg_init(&rng_drbg);
        if (mbedtls_ctr_drbg_seed(&rng_drbg, mbedtls_entropy_func,
                                  &rng_entropy, (const unsigned char *)pers,
                                  sizeof(pers) - 1) != 0) {
            mbedtls_ctr_drbg_free(&rng_drbg);
            mbedtls_entropy_free(&rng_entropy);
            rc = -EIO;
            goto out;
        }
        rng_ready = true;
        rng_pid = pid;
    } else if (pid != rng_pid) {
        /* A forked child must not replay its parent's stream. */
        if (mbedtls_ctr_drbg_reseed(&rng_drbg, (const unsigned char *)&pid,
                                    sizeof(pid)) != 0) {
            rc = -EIO;
            goto out;
        }
        rng_pid = pid;
    }
    while (len > 0) {
        size_t chunk = len < MBEDTLS_CTR_DRBG_MAX_REQUEST
                           ? len
                           : MBEDTLS_CTR_DRBG_MAX_REQUEST;
        if (mbedtls_ctr_drbg_random(&rng_drbg, p, chunk) != 0) {
            rc = -EIO;
            goto out;
        }
        p += chunk;
        len -= chunk;
    }
out:
    pthread_mutex_unlock(&rng_lock);
    return rc;
}
