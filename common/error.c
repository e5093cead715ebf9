/*
 * error.c - one strerror for every error range (common.h PMM_ERRNO_MAP).
 */
#include "common/common.h"

#include <limits.h>
#include <string.h>

const char *pmm_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define PMM_ERRNO_TEXT(name, value, text)                                       \
    case name:                                                                  \
        return text;
        PMM_ERRNO_MAP(PMM_ERRNO_TEXT)
#undef PMM_ERRNO_TEXT
    default:
        break;
    }
    if (err == INT_MIN || err <= -500)
        return "unknown error";
    /* glibc returns a static string for every known errno and a
     * "Unknown error N" string for the rest; never NULL. */
    return strerror(err < 0 ? -err : err);
}
