/*
 * tap.h - a tiny TAP producer for pmgcm's C tests (header only).
 *
 *   static void test_x(void) { CHECK(1 + 1 == 2); CHECK_EQ_INT(a, b); }
 *   int main(void) {
 *       TAP_RUN(test_x);
 *       TAP_RUN(test_y);
 *       return tap_done();
 *   }
 *
 * Each TAP_RUN is one TAP test point: "ok N - test_x" when every CHECK in it
 * held, "not ok N - test_x" otherwise (each failed CHECK prints a diagnostic
 * with file:line). tap_done() prints the plan and returns the exit status.
 */
#ifndef PMGCM_TAP_H
#define PMGCM_TAP_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n_ = 0;
static int tap_failed_points_ = 0;
static int tap_cur_failed_ = 0;

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            tap_cur_failed_++;                                                \
            printf("#   FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            fflush(stdout);                                                   \
        }                                                                     \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                    \
    do {                                                                      \
        long long va_ = (long long)(a), vb_ = (long long)(b);                 \
        if (va_ != vb_) {                                                     \
            tap_cur_failed_++;                                                \
            printf("#   FAILED %s:%d: %s == %s (%lld != %lld)\n", __FILE__,  \
                   __LINE__, #a, #b, va_, vb_);                               \
            fflush(stdout);                                                   \
        }                                                                     \
    } while (0)

/* Abort the current test point (after a failed precondition). */
#define REQUIRE(cond)                                                         \
    do {                                                                      \
        if (!(cond)) {                                                        \
            tap_cur_failed_++;                                                \
            printf("#   REQUIRE FAILED %s:%d: %s\n", __FILE__, __LINE__,     \
                   #cond);                                                    \
            fflush(stdout);                                                   \
            return;                                                           \
        }                                                                     \
    } while (0)

#define TAP_RUN(fn)                                                           \
    do {                                                                      \
        tap_cur_failed_ = 0;                                                  \
        fn();                                                                 \
        tap_n_++;                                                             \
        if (tap_cur_failed_) tap_failed_points_++;                            \
        printf("%s %d - %s\n", tap_cur_failed_ ? "not ok" : "ok", tap_n_,     \
               #fn);                                                          \
        fflush(stdout);                                                       \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n_);
    return tap_failed_points_ ? 1 : 0;
}

#endif
