/*
 * fuzz_ctl.c - the control socket's request parser (membership/command.c,
 * pmm_ctl_parse_request): a request is either a known command with an
 * object of arguments, or refused with a message and no arguments.
 */
#include "tests/fuzz/fuzz.h"
#include "membership/membership.h"

#include <errno.h>
#include <stdlib.h>

static size_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *cmd = NULL;
    pmm_json *args = (pmm_json *)&sink; /* must be overwritten */
    char err[PMM_CTL_ERR_MAX] = "";
    int rc = pmm_ctl_parse_request((const char *)data, size, &cmd, &args,
                                   err, sizeof(err));
    if (rc == 0) {
        if (!cmd || !args || args->type != PMM_JSON_OBJECT) abort();
        sink += strlen(cmd) + args->n_child;
        for (const pmm_json *c = args->child; c; c = c->next)
            sink += strlen(c->key) + (c->str ? c->str_len : 0);
        pmm_json_free(args);
    } else {
        if (args != NULL || err[0] == '\0') abort();
        if (rc != -E2BIG && rc != -ENOENT && rc != -EINVAL && rc != -ENOMEM)
            abort();
        pmm_buf b;
        pmm_buf_init(&b, 4096);
        if (pmm_ctl_error_reply(&b, err) == 0) sink += b.len;
        pmm_buf_free(&b);
    }
    return 0;
}
