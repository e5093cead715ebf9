/*
 * reply.c - an answer owed to a control request (common.h pmm_ctl_req):
 * the JSON shapes every command answers with, handed to whoever made the
 * request (the control socket, daemon/ctl.c).
 */
#include "common/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int pmm_ctl_error_reply(pmm_buf *b, const char *msg)
{
    pmm_buf_puts(b, "{\"ok\":false,\"error\":");
    pmm_json_str(b, msg, strlen(msg));
    return pmm_buf_puts(b, "}\n");
}

void pmm_ctl_reply(pmm_ctl_req *req, const char *json, size_t len)
{
    if (req != NULL)
        req->answer(req, json, len);
}

void pmm_ctl_reply_error(pmm_ctl_req *req, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    pmm_buf b;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pmm_buf_init(&b, PMM_CTL_REPLY_MAX);
    pmm_ctl_error_reply(&b, msg);
    if (b.err != 0)
        pmm_ctl_reply(req, NULL, 0); /* "internal error" */
    else
        pmm_ctl_reply(req, b.p, b.len);
    pmm_buf_free(&b);
}

void pmm_ctl_reply_ok(pmm_ctl_req *req, const char *extra)
{
    pmm_buf b;

    pmm_buf_init(&b, PMM_CTL_REPLY_MAX);
    pmm_buf_puts(&b, "{\"ok\":true");
    if (extra != NULL && extra[0] != '\0') {
        pmm_buf_puts(&b, ",");
        pmm_buf_puts(&b, extra);
    }
    pmm_buf_puts(&b, "}\n");
    if (b.err != 0)
        pmm_ctl_reply(req, NULL, 0);
    else
        pmm_ctl_reply(req, b.p, b.len);
    pmm_buf_free(&b);
}
