/*
 * pgoutput.h - a sans-IO decoder for PostgreSQL's logical replication
 * stream (store library internal, prefix pst_pgo_).
 *
 * Two layers, both pure (bytes in, events out; no libpq, no clock):
 *
 *   - the replication CopyData framing of a walsender: XLogData ('w') and
 *     primary keepalive ('k') in, standby status update ('r') out;
 *   - the pgoutput plugin's messages (protocol version 1, PostgreSQL 15):
 *     Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
 *     Truncate and logical decoding Message. Relation messages are cached
 *     by the decoder; row messages come out with every column rendered as
 *     a JSON object the way to_jsonb(row) renders it (numbers and booleans
 *     bare, json/jsonb raw, everything else a JSON string, NULL as null),
 *     so a change decoded here is the same text the trigger route captured.
 *
 * Every length and count is checked against the bytes present and against
 * the bounds below before anything is allocated; a malformed message is
 * -EPROTO (or -E2BIG past a bound) and changes nothing.
 *
 * Ownership: a pst_pgo decoder is owned by its caller (pst_pgo_new /
 * pst_pgo_free). A decoded pst_pgo_msg borrows from the decoder and from
 * the input buffer until the next pst_pgo_decode or pst_pgo_msg_clear;
 * the JSON strings in it (old_json, new_json) are malloc'ed and owned by
 * the message (freed by pst_pgo_msg_clear).
 */
#ifndef PMGCM_STORE_PGOUTPUT_H
#define PMGCM_STORE_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PST_PGO_MAX_ATTS 1600        /* PostgreSQL's MaxHeapAttributeNumber */
#define PST_PGO_MAX_NAME 63          /* NAMEDATALEN - 1                     */
#define PST_PGO_MAX_RELS 65536       /* relations cached at once            */
#define PST_PGO_MAX_TRUNC 4096       /* relations in one Truncate           */

/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01). */
#define PST_PGO_EPOCH_OFFSET_US 946684800000000LL

/* ---- walsender CopyData framing ------------------------------------------ */

typedef struct pst_pgo_copy {
    char kind;          /* 'w' XLogData, 'k' keepalive                     */
    uint64_t wal_start; /* 'w': the LSN the data starts at                 */
    uint64_t wal_end;   /* current end of WAL on the server                */
    int64_t send_time;  /* server clock, us since 2000-01-01               */
    bool reply;         /* 'k': the server asks for a status update now    */
    const uint8_t *data;/* 'w': the pgoutput message (borrowed)            */
    size_t len;
} pst_pgo_copy;

/* Parses one CopyData payload from a walsender. 0, -EPROTO. */
int pst_pgo_copy_parse(const uint8_t *buf, size_t len, pst_pgo_copy *out);

/* Writes a standby status update ('r', 34 bytes) into out. */
#define PST_PGO_FEEDBACK_LEN 34
void pst_pgo_feedback(uint8_t out[PST_PGO_FEEDBACK_LEN], uint64_t write_lsn,
                      uint64_t flush_lsn, uint64_t apply_lsn,
                      int64_t now_pg_us, bool reply);

/* "16/B374D848" form of an LSN; buf >= 24 bytes. Returns buf. */
char *pst_pgo_lsn_str(uint64_t lsn, char *buf, size_t len);
/* Parses "X/Y" (hex). 0, -EINVAL. */
int pst_pgo_lsn_parse(const char *s, uint64_t *out);

/* ---- pgoutput messages ---------------------------------------------------- */

typedef struct pst_pgo_att {
    char *name;
    uint32_t typoid;
    int32_t typmod;
    bool key; /* part of the replica identity */
} pst_pgo_att;

typedef struct pst_pgo_rel {
    uint32_t oid;
    char *nspname, *relname; /* raw names: look them up in the local set */
    char replident;   /* 'd' default, 'n' nothing, 'f' full, 'i' index     */
    uint32_t natts;
    pst_pgo_att *atts;
} pst_pgo_rel;

typedef enum pst_pgo_kind {
    PST_PGO_BEGIN = 'B',
    PST_PGO_COMMIT = 'C',
    PST_PGO_ORIGIN = 'O',
    PST_PGO_RELATION = 'R',
    PST_PGO_TYPE = 'Y',
    PST_PGO_INSERT = 'I',
    PST_PGO_UPDATE = 'U',
    PST_PGO_DELETE = 'D',
    PST_PGO_TRUNCATE = 'T',
    PST_PGO_MESSAGE = 'M',
} pst_pgo_kind;

typedef struct pst_pgo_msg {
    pst_pgo_kind kind;
    /* BEGIN: final_lsn, ts, xid. COMMIT: lsn (commit), end_lsn, ts.
     * ORIGIN: lsn (on the origin), name. MESSAGE: lsn, transactional,
     * prefix, content/content_len. */
    uint64_t lsn, end_lsn;
    int64_t ts;          /* us since 2000-01-01 */
    uint32_t xid;
    const char *name;    /* ORIGIN name / MESSAGE prefix (borrowed, NUL-terminated copy inside the decoder) */
    bool transactional;
    const uint8_t *content;
    size_t content_len;
    /* INSERT/UPDATE/DELETE/RELATION: the relation (borrowed from the
     * decoder's cache). */
    const pst_pgo_rel *rel;
    /* UPDATE/DELETE: 'K' (key columns only), 'O' (whole old row), or 0
     * (UPDATE without an old tuple: the key did not change). */
    char old_kind;
    char *old_json;      /* owned; NULL when absent                      */
    char *new_json;      /* owned; NULL when absent (DELETE)             */
    /* UPDATE: columns sent as "unchanged TOAST" are left out of new_json
     * and counted here; the applier keeps their current values. */
    uint32_t unchanged;
    /* TRUNCATE */
    uint32_t n_rels;
    const pst_pgo_rel **rels; /* borrowed; array owned by the decoder */
    uint8_t trunc_flags;      /* 1 cascade, 2 restart identity        */
} pst_pgo_msg;

typedef struct pst_pgo pst_pgo;

/* A decoder with an empty relation cache. NULL with errno = ENOMEM. */
pst_pgo *pst_pgo_new(void);
void pst_pgo_free(pst_pgo *d); /* NULL ok */

/* Decodes one pgoutput message (the data of an XLogData). Fills *out
 * (clear it with pst_pgo_msg_clear when done). Relation messages update
 * the cache. 0, -EPROTO (malformed, unknown kind, a row for a relation
 * never described), -E2BIG (over a bound), -ENOMEM. On error *out holds
 * nothing to free. */
int pst_pgo_decode(pst_pgo *d, const uint8_t *buf, size_t len,
                   pst_pgo_msg *out);
void pst_pgo_msg_clear(pst_pgo_msg *m);

/* The cached relation with that oid, or NULL. */
const pst_pgo_rel *pst_pgo_relation(const pst_pgo *d, uint32_t oid);

/* Appends s to a JSON string literal (with quotes) into a growing buffer;
 * exposed for tests. Returns 0 or -ENOMEM. */
int pst_pgo_json_string(char **buf, size_t *len, size_t *cap, const char *s,
                        size_t n);

#endif
