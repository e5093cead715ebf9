/*
 * common.h - the helpers every pmgcm library shares: logging, a bounded
 * growable buffer, a small bounded JSON writer/reader, UTF-8 checks and
 * small-file I/O. Depends on nothing of ours (libc only).
 *
 * Everything exported is prefixed pmm_ (these helpers grew up in the
 * membership library and kept its prefix). Functions return 0 or a
 * negative errno unless stated otherwise. Every input is bounded and
 * validated before use; on error the output is left unchanged (or zeroed)
 * and a human-readable message is written into err when given.
 */
#ifndef PMGCM_COMMON_H
#define PMGCM_COMMON_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif
/* ---- errors ------------------------------------------------------------------
 * Functions return 0 or a negative errno, or one of the project's codes
 * below -500 where errno has none: one range per library, all listed here
 * once (name, value, text), so one strerror covers them all. */
#define PMM_ERRNO_MAP(X)                                                        \
    /* gossip/ (-501..-559) */                                                  \
    X(GSP_EDECRYPT, -501,                                                       \
      "packet could not be decrypted with any key in the keyring")              \
    X(GSP_EDECODE, -502, "packet is not a valid gossip message")                \
    X(GSP_ETOOBIG, -503, "input exceeds a configured bound")                    \
    X(GSP_ESELF, -504, "packet claims to come from this node's own id")         \
    X(GSP_EREPLAY, -505, "packet replayed or too old")                          \
    X(GSP_EMISDIRECTED, -506, "packet addressed to another node")               \
    /* net/ (-560..-599) */                                                     \
    X(PMM_TLS_EFINGERPRINT, -560,                                               \
      "peer certificate fingerprint does not match the pinned one")             \
    X(PMM_TLS_ENOCERT, -561, "peer presented no certificate")                   \
    X(PMM_TLS_EREFUSED, -562, "peer refused (fingerprint not accepted)")        \
    X(PMM_TLS_EDENIED, -563, "the peer refused this node")                      \
    X(PMM_TLS_EHANDSHAKE, -564, "TLS handshake failed")                         \
    X(PMM_TLS_ETOOBIG, -565, "frame exceeds the maximum frame size")            \
    X(PMM_TLS_ECORRUPT, -566, "TLS identity files corrupt or incomplete")       \
    X(PMM_TLS_EEVICTED, -567,                                                   \
      "unfinished handshake dropped to make room for a newer one")              \
    /* store/ (-700..-799) */                                                   \
    X(PST_ENEEDSNAP, -701, "the upstream no longer holds our changes")          \
    X(PST_EDIVERGED, -702, "this node holds changes the cluster never got")     \
    X(PST_ESCHEMA, -703, "table definitions differ")                            \
    X(PST_EREMOTE, -704, "the peer reported an error")                          \
    X(PST_EDB, -705, "database error")                                          \
    X(PST_EPROTO, -706, "malformed stream message")                             \
    X(PST_EAHEAD, -707, "the upstream is behind this node")

#define PMM_ERRNO_ENUM(name, value, text) name = (value),
enum pmm_errcode { PMM_ERRNO_MAP(PMM_ERRNO_ENUM) };
#undef PMM_ERRNO_ENUM

/* Static text for 0, -errno (or errno), and every code above; never NULL.
 * gsp_strerror, pmm_tls_strerror and pst_strerror are this function. */
const char *pmm_strerror(int err);

/* This build's version: PACKAGE_VERSION, plus "+<git describe --always
 * --dirty>" when the source tree was a git checkout at build time
 * ("0.1.0+94bd217"); at most PMM_BUILD_VERSION_MAX printable bytes
 * (generated: common/Makefile.inc). */
#define PMM_BUILD_VERSION_MAX 63
extern const char pmm_build_version[];

/* ---- logging: "LEVEL subsystem: message" on stderr -------------------- */
typedef enum pmm_log_level {
    PMM_LOG_ERROR = 0,
    PMM_LOG_WARN = 1,
    PMM_LOG_INFO = 2,
    PMM_LOG_DEBUG = 3,
} pmm_log_level;

/* text: "TIME LEVEL subsystem: message"; json: one object per line,
 * {"time":"...Z","level":"warn","subsystem":"files","message":"..."}. */
typedef enum pmm_log_format {
    PMM_LOG_TEXT = 0,
    PMM_LOG_JSON = 1,
} pmm_log_format;

void pmm_log_set_level(pmm_log_level lvl);
void pmm_log_set_format(pmm_log_format fmt);
pmm_log_format pmm_log_get_format(void);
pmm_log_level pmm_log_get_level(void);
const char *pmm_log_level_name(pmm_log_level lvl); /* "error", "warn", ... */
int pmm_log_level_parse(const char *s, pmm_log_level *out); /* 0/-EINVAL */
/* One line on stderr: "<N>LEVEL subsystem: message" when stderr is the
 * journal (JOURNAL_STREAM names it; N is the syslog priority), else
 * "YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL subsystem: message" (UTC). Control
 * characters in the message become '?' (a newline or tab a blank; trailing
 * blanks are dropped). With pmm_log_set_format(PMM_LOG_JSON) the line after
 * "<N>" (journal) is one JSON object instead (pmm_log_json_line), control
 * characters escaped. Thread-safe. */
void pmm_log(pmm_log_level lvl, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The JSON line pmm_log writes with log_format = json (without the "<N>"
 * prefix), '\n' ended, into out (cap bytes, NUL-terminated): WHEN, the
 * level's name, SUBSYS and MSG as JSON strings, escaped. 0, -EINVAL, or
 * -E2BIG when it does not fit. */
int pmm_log_json_line(char *out, size_t cap, const char *when,
                      pmm_log_level lvl, const char *subsys, const char *msg);
/* 1 if ENV (JOURNAL_STREAM's value, "DEV:INODE"; may be NULL) names the
 * stream open on FD, else 0. */
int pmm_log_journal_stream(const char *env, int fd);
/* sd_notify(3) by hand: sends STATE ("READY=1", "STOPPING=1", ...) as one
 * datagram to $NOTIFY_SOCKET (a path, or "@name" in the abstract
 * namespace) without blocking. 0 when sent or when NOTIFY_SOCKET is unset
 * (not under systemd), else a negative errno. */
int pmm_sd_notify(const char *state);

/* ---- small files (blocking: startup or a worker thread) ------------------ */
#define PMM_PATH_MAX 256 /* a path in the configuration or data_dir */

/* Formats a message into err (if err and errlen) and returns rc. */
int pmm_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Reads a whole small file into buf, NUL-terminated (*len may be NULL).
 * Does not follow a final symlink. 0, -errno, -EFBIG if it has cap-1 bytes
 * or more. Blocking. */
int pmm_read_small(const char *path, char *buf, size_t cap, size_t *len);
/* Reads fd to its end into buf: 0 and *len; -EFBIG when it holds cap
 * bytes or more (buf then holds cap bytes: wipe it if they are secret);
 * -errno. */
int pmm_read_fd(int fd, void *buf, size_t cap, size_t *len);
/* Writes all len bytes to fd (retrying short writes and EINTR): 0, -errno. */
int pmm_write_all(int fd, const void *data, size_t len);
/* Gives fd the mode, writes data, fsyncs and closes fd (always): 0 or
 * the first -errno. */
int pmm_write_close(int fd, mode_t mode, const void *data, size_t len);
/* mkdir -p; the last component gets `mode`, missing parents 0755. */
int pmm_mkdir_p(const char *path, mode_t mode);
/* Writes dir/name atomically: dir/.name.tmp, fsync, rename, fsync(dir). */
int pmm_write_file_atomic(const char *dir, const char *name,
                          const void *data, size_t len, mode_t mode);

/* ---- randomness ------------------------------------------------------------ */
/* len cryptographically strong random bytes from the process's one
 * generator (random.c): 0, -EINVAL (buf NULL), -EIO. Thread safe. */
int pmm_random(void *buf, size_t len);

/* ---- hexadecimal ----------------------------------------------------------- */
/* A hex digit's value (either case), or -1. */
int pmm_hexval(char c);
/* 2*n hex digits (either case) at s into out[n]: 0, or -EINVAL at the
 * first non-digit (out is then partly written). Reads at most 2*n bytes. */
int pmm_hex_decode(const char *s, size_t n, uint8_t *out);
/* n bytes as 2*n digits (lowercase, or uppercase when upper) and a NUL
 * into out (2*n + 1 bytes). Returns out. */
char *pmm_hex_encode(const uint8_t *b, size_t n, char *out, bool upper);

/* ---- addresses ------------------------------------------------------------ */
struct sockaddr;
struct sockaddr_storage;
/* ip (family 4: 4 bytes, 6: 16 bytes) and port as a socket address;
 * returns its length. */
socklen_t pmm_sockaddr_raw(struct sockaddr_storage *ss, int family,
                           const uint8_t *ip, uint16_t port);
/* An IPv4 or IPv6 literal ("10.0.0.1", "fd00::1") and port: 0 or -EINVAL
 * (*ss zeroed). */
int pmm_sockaddr_ip(struct sockaddr_storage *ss, const char *ip,
                    uint16_t port);
/* sa's IP as text ("" for NULL or another family). len >= 46 (INET6_
 * ADDRSTRLEN) always suffices. Returns buf. */
char *pmm_sockaddr_ip_str(const struct sockaddr *sa, char *buf, size_t len);

/* ---- bounded growable buffer --------------------------------------------- */
typedef struct pmm_buf {
    char *p;      /* NUL-terminated while not failed */
    size_t len;
    size_t cap;
    size_t max;   /* hard bound on len */
    int err;      /* sticky: first error (-ENOMEM / -E2BIG) */
} pmm_buf;

void pmm_buf_init(pmm_buf *b, size_t max);
void pmm_buf_free(pmm_buf *b);
void pmm_buf_reset(pmm_buf *b);
int pmm_buf_add(pmm_buf *b, const void *data, size_t n);
int pmm_buf_puts(pmm_buf *b, const char *s);
int pmm_buf_printf(pmm_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Makes room for extra more bytes (and the NUL) now, so that adding up to
 * that much never reallocates (used for buffers that will hold secrets). */
int pmm_buf_reserve(pmm_buf *b, size_t extra);
/* Zeroes the whole allocation, then frees it like pmm_buf_free. */
void pmm_buf_wipe(pmm_buf *b);

/* ---- JSON ---------------------------------------------------------------- */
/* Writes s (n bytes) as a JSON string with quotes; escapes '"', '\\' and
 * control characters; invalid UTF-8 bytes become U+FFFD. Only for the JSON
 * log line (common/log.c: no allocation per value); everything else builds
 * a json_t and writes it with pmm_json_put. */
int pmm_json_str(pmm_buf *b, const char *s, size_t n);
/* Writing JSON goes through jansson: build a json_t, then pmm_json_put.
 * pmm_jstr: a JSON string for s (n bytes, NULs kept); invalid UTF-8 bytes
 * become U+FFFD (as pmm_json_str). New reference, or NULL when out of
 * memory. */
json_t *pmm_jstr(const char *s, size_t n);
/* pmm_jstr for a NUL-terminated s (not NULL). */
json_t *pmm_jstrz(const char *s);
/* Sets member key of object o to v (v's reference is taken) and returns
 * o; when o or v is NULL (a constructor that failed) or on out of memory
 * both are released and NULL returned, so that optional members chain and
 * are checked once: o = pmm_jadd(o, "lost", pmm_jstrz(lost)). */
json_t *pmm_jadd(json_t *o, const char *key, json_t *v);
/* Appends v as compact JSON (members in insertion order, reals with 15
 * significant digits) to b and releases
 * v (the reference is taken, also on error). 0, -ENOMEM (v NULL, or out of
 * memory), or b->err. */
int pmm_json_put(pmm_buf *b, json_t *v);
/* The same, with '<', '>', '&' and '\'' written as \u003c, \u003e,
 * \u0026, \u0027 (they occur only inside strings in JSON text): no name
 * in it shows as markup even to a client that sniffs. */
int pmm_json_put_safe(pmm_buf *b, json_t *v);
/* JSON text s (n bytes, one document) read by jansson and written to b
 * indented by two spaces a level, members in their order, and a newline
 * (--output-format json-pretty). 0, -EINVAL (not JSON), -ENOMEM or b->err. */
int pmm_json_indent(pmm_buf *b, const char *s, size_t n);
/* Copies src into dst (cap bytes, NUL-terminated, cut to fit) for a log,
 * a terminal or gossip: control and non-ASCII bytes become '?'. */
void pmm_printable(char *dst, size_t cap, const char *src);
/* True when s (n bytes) is valid UTF-8 (no overlongs, no surrogates). */
bool pmm_utf8_valid(const char *s, size_t n);
/* Characters (code points) in s (n bytes of valid UTF-8). */
size_t pmm_utf8_chars(const char *s, size_t n);


#define PMM_JSON_MAX_INPUT (16u * 1024 * 1024)
#define PMM_JSON_MAX_DEPTH 32

typedef enum pmm_json_type {
    PMM_JSON_NULL,
    PMM_JSON_BOOL,
    PMM_JSON_NUMBER,
    PMM_JSON_STRING,
    PMM_JSON_ARRAY,
    PMM_JSON_OBJECT,
} pmm_json_type;

typedef struct pmm_json pmm_json;
struct pmm_json {
    pmm_json_type type;
    bool b;
    double num;
    char *str;          /* STRING: decoded UTF-8, NUL-terminated */
    size_t str_len;     /* may contain NULs (from \u0000) */
    char *key;          /* member of an OBJECT: its key */
    pmm_json *child;    /* ARRAY/OBJECT: first element */
    pmm_json *next;     /* next sibling */
    size_t n_child;
};

/* Parses one JSON document (RFC 8259, bounded: PMM_JSON_MAX_INPUT bytes,
 * PMM_JSON_MAX_DEPTH nesting). Trailing whitespace only; an object key
 * containing \u0000 is refused. Each string is decoded into one allocation
 * that is never grown. Returns 0 and *out (free with pmm_json_free),
 * -EINVAL with a message, -ENOMEM, -E2BIG. */
int pmm_json_parse(const char *text, size_t len, pmm_json **out, char *err,
                   size_t errlen);
/* Frees the tree; every string value is zeroed first (it may have been a
 * password). */
void pmm_json_free(pmm_json *j);
/* Object member by key (first match) or NULL. */
const pmm_json *pmm_json_get(const pmm_json *obj, const char *key);


/* ---- an answer owed to a control request ------------------------------------
 * A command handler (the daemon's, membership's lifecycle commands, the
 * mirrored files' publish) gets a pmm_ctl_req and must answer it exactly
 * once, now or later, with pmm_ctl_reply*(); that frees it. Whoever made
 * the request (the control socket, daemon/ctl.c) sets `answer`. */
#define PMM_CTL_REPLY_MAX (16u * 1024 * 1024)

typedef struct pmm_ctl_req pmm_ctl_req;
struct pmm_ctl_req {
    /* Takes one JSON object (len bytes; NULL or 0: "internal error") and
     * frees req. */
    void (*answer)(pmm_ctl_req *req, const char *json, size_t len);
};

/* Answers req with json (len bytes: one JSON object; a '\n' is appended
 * unless it ends with one) and frees req: req is invalid afterwards.
 * Loop thread only. The bytes are copied. Harmless when the client is gone,
 * has timed out or the server was closed: then req is only freed. NULL is
 * a no-op. */
void pmm_ctl_reply(pmm_ctl_req *req, const char *json, size_t len);
/* {"ok":false,"error":"<printf fmt, ...>"} (the message is cut at 1023
 * bytes; a byte sequence that is not UTF-8 becomes U+FFFD). */
void pmm_ctl_reply_error(pmm_ctl_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* {"ok":true} */
void pmm_ctl_reply_ok(pmm_ctl_req *req);
/* {"ok":true,<the members of `members`, in their order>}. members is an
 * object without an "ok" member, typically a json_pack(...) written at the
 * call; the reference is taken (released here, also on error and when req
 * is NULL). NULL (a json_pack or json_object that failed) answers
 * {"ok":false,"error":"out of memory"}; a non-object or one with "ok"
 * answers "internal error" (a bug). Strings in it go through pmm_jstr
 * (never json_string on unchecked bytes). */
void pmm_ctl_reply_ok_with(pmm_ctl_req *req, json_t *members);
/* The bytes of those answers, appended to b with a '\n' (for the control
 * socket's own errors, and tests): 0, -ENOMEM, -EINVAL (members as above;
 * its reference is taken), or b->err. On failure b->err is set too, so a
 * caller that only checks b->err sees it. */
int pmm_ctl_ok_reply(pmm_buf *b, json_t *members);
int pmm_ctl_error_reply(pmm_buf *b, const char *msg);

/* ---- memory budget for unauthenticated input ----------------------------
 * One process-wide cap on the bytes held for input nobody has authenticated
 * yet (gossip TCP frames before they are opened, TLS handshakes, HTTP
 * requests). Every reader takes what it is about to allocate and gives it
 * back when it frees it or the input turns out to be authentic; a take that
 * would pass the limit fails and the reader drops that connection. All
 * functions are thread-safe (C11 atomics). A NULL budget means "unlimited":
 * take always succeeds and nothing is counted. */
typedef struct gsp_budget gsp_budget;
/* limit in bytes (> 0). Returns NULL with errno set (EINVAL, ENOMEM).
 * Caller owns the result; free with gsp_budget_free once every taker is
 * gone. */
gsp_budget *gsp_budget_new(size_t limit);
void gsp_budget_free(gsp_budget *b); /* NULL is a no-op */
/* Reserves n bytes: 0, or -ENOBUFS (nothing reserved; the refusal is
 * counted). n == 0 always succeeds. */
int gsp_budget_take(gsp_budget *b, size_t n);
/* Returns n bytes reserved earlier by gsp_budget_take. */
void gsp_budget_give(gsp_budget *b, size_t n);
typedef struct gsp_budget_stats {
    size_t limit, used, peak;
    uint64_t refused; /* takes that failed */
} gsp_budget_stats;
/* A consistent-enough snapshot (each field read atomically). b may be NULL
 * (all zero). */
void gsp_budget_get(const gsp_budget *b, gsp_budget_stats *out);

#ifdef __cplusplus
}
#endif
#endif
