/*
 * reply.c - an answer owed to a control request (common.h pmm_ctl_req):
 * the JSON shapes every command answers with, built as jansson values and
 * written by pmm_json_put, handed to whoever made the request (the control
 * socket, daemon/ctl.c).
 */
#include "common/common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Appends o (reference taken) and a '\n' to b; a failure also in b->err. */
static int reply_put(pmm_buf *b, json_t *o)
{
    int rc = pmm_json_put(b, o);

    if (rc == 0)
        rc = pmm_buf_puts(b, "\n");
    if (rc != 0 && b->err == 0)
        b->err = rc;
    return rc;
}

int pmm_ctl_error_reply(pmm_buf *b, const char *msg)
{
    return reply_put(b, json_pack("{s:b, s:o}", "ok", 0, "error",
                                  pmm_jstrz(msg)));
}

int pmm_ctl_ok_reply(pmm_buf *b, json_t *members)
{
    json_t *o = NULL;
    int rc = 0;

    if (members == NULL)
        rc = -ENOMEM;
    else if (!json_is_object(members) || json_object_get(members, "ok"))
        rc = -EINVAL;
    else if ((o = json_pack("{s:b}", "ok", 1)) == NULL ||
             json_object_update(o, members) != 0)
        rc = -ENOMEM; /* update keeps the members' order, after "ok" */
    json_decref(members);
    if (rc != 0) {
        json_decref(o);
        if (b->err == 0)
            b->err = rc;
        return rc;
    }
    return reply_put(b, o);
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
    if (pmm_ctl_error_reply(&b, msg) != 0)
        pmm_ctl_reply(req, NULL, 0); /* "internal error" */
    else
        pmm_ctl_reply(req, b.p, b.len);
    pmm_buf_free(&b);
}

void pmm_ctl_reply_ok_with(pmm_ctl_req *req, json_t *members)
{
    pmm_buf b;
    int rc;

    pmm_buf_init(&b, PMM_CTL_REPLY_MAX);
    rc = pmm_ctl_ok_reply(&b, members);
    if (rc == -ENOMEM)
        pmm_ctl_reply_error(req, "out of memory");
    else if (rc != 0)
        pmm_ctl_reply(req, NULL, 0); /* "internal error" */
    else
        pmm_ctl_reply(req, b.p, b.len);
    pmm_buf_free(&b);
}

void pmm_ctl_reply_ok(pmm_ctl_req *req)
{
    pmm_ctl_reply_ok_with(req, json_object());
}
