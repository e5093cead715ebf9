/*
 * status.c - status rows: from gossip members, to PMG's text table, to and
 * from JSON.
 */
#include "membership/membership.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char pmm_state_letter(gsp_state s)
{
    switch (s) {
    case GSP_ALIVE:
        return 'A';
    case GSP_SUSPECT:
        return '?';
    case GSP_DEAD:
        return 'D';
    case GSP_LEFT:
        return 'L';
    }
    return '-';
}

void pmm_status_row_from_member(pmm_status_row *r, const gsp_member *m,
                                int64_t now_unix)
{
    pmm_meta meta;

    memset(r, 0, sizeof(*r));
    memcpy(r->name, m->name, sizeof(r->name) - 1);
    r->name[sizeof(r->name) - 1] = '\0';
    gsp_id_str(&m->id, r->id, sizeof(r->id));
    gsp_addr_ip_str(&m->addr, r->ip, sizeof(r->ip));
    r->port = m->addr.port;
    r->state = pmm_state_letter(m->state);
    snprintf(r->gossip_state, sizeof(r->gossip_state), "%s",
             gsp_state_name(m->state));
    r->self = m->is_self;
    r->uptime = -1;
    r->load = -1;
    r->mem = -1;
    r->disk = -1;
    r->last_seen = -1;
    strcpy(r->role, "-");
    if (m->meta == NULL || pmm_meta_decode(&meta, m->meta, m->meta_len) != 0)
        return;
    r->has_meta = true;
    r->cid = meta.cid;
    memcpy(r->version, meta.build, sizeof(r->version));
    r->proto_min = meta.proto_min;
    r->proto_max = meta.proto_max;
    memcpy(r->role, meta.role, sizeof(r->role));
    r->load = meta.load1 / 100.0;
    r->mem = (int)meta.mem_pct;
    r->disk = (int)meta.disk_pct;
    if (meta.db_state) {
        static const char *const names[] = {"off", "connecting", "idle",
                                            "loading", "catching-up",
                                            "in-sync", "diverged", "error"};
        r->has_db = true;
        snprintf(r->db_state, sizeof(r->db_state), "%s",
                 meta.db_state < 8 ? names[meta.db_state] : "unknown");
        r->db_epoch = meta.db_epoch;
        r->db_seq = meta.db_seq;
        r->db_ts_ms = meta.db_ts_ms;
        memcpy(r->db_reason, meta.db_reason, sizeof(r->db_reason));
        r->db_lag = meta.db_lag;
        r->db_kept = meta.db_kept;
        r->db_divergence = meta.db_divergence;
        r->n_origins = meta.n_origins;
        for (uint32_t i = 0; i < meta.n_origins; i++) {
            r->origins[i].cid = meta.origins[i].cid;
            r->origins[i].seq = meta.origins[i].seq;
        }
    }
    if (m->state == GSP_ALIVE || m->state == GSP_SUSPECT) {
        /* start_time comes from the member's clock: clamp small skew */
        if (meta.start_time > (uint64_t)INT64_MAX ||
            (int64_t)meta.start_time > now_unix)
            r->uptime = 0;
        else
            r->uptime = now_unix - (int64_t)meta.start_time;
    }
}

void pmm_status_db_finish(pmm_status_row *rows, size_t n)
{
    const pmm_status_row *m = NULL;
    for (size_t i = 0; i < n; i++)
        if (rows[i].has_db && strcmp(rows[i].role, "master") == 0 &&
            rows[i].state == 'A')
            m = &rows[i];
    for (size_t i = 0; i < n; i++) {
        pmm_status_row *r = &rows[i];
        if (!r->has_db) continue;
        if (m && m->db_seq > r->db_seq) {
            r->lag_changes = m->db_seq - r->db_seq;
            r->lag_seconds = m->db_ts_ms > r->db_ts_ms
                                 ? (double)(m->db_ts_ms - r->db_ts_ms) / 1000.0
                                 : 0;
        }
        /* what the node itself knows may be newer than the master's row */
        if (r->db_lag > r->lag_changes)
            r->lag_changes = r->db_lag;
        /* each origin's head: what that node says about its own rows */
        for (uint32_t k = 0; k < r->n_origins; k++) {
            uint64_t head = r->origins[k].seq;
            for (size_t j = 0; j < n; j++)
                if (rows[j].cid == r->origins[k].cid)
                    for (uint32_t q = 0; q < rows[j].n_origins; q++)
                        if (rows[j].origins[q].cid == r->origins[k].cid &&
                            rows[j].origins[q].seq > head)
                            head = rows[j].origins[q].seq;
            r->origins[k].behind = head - r->origins[k].seq;
        }
        /* idle (no role yet) is in sync only for a node outside a
         * cluster: in one, it is not following anything yet */
        if (r->state == 'A' && strcmp(r->db_state, "in-sync") != 0 &&
            (strcmp(r->db_state, "idle") != 0 || strcmp(r->role, "-") != 0))
            r->state = 'S';
    }
}

char *pmm_format_ago(int64_t secs, char *buf, size_t len)
{
    if (secs < 0)
        snprintf(buf, len, "?");
    else if (secs < 60)
        snprintf(buf, len, "%ds", (int)secs);
    else if (secs < 3600)
        snprintf(buf, len, "%dm%02ds", (int)(secs / 60), (int)(secs % 60));
    else if (secs < 86400)
        snprintf(buf, len, "%dh%02dm", (int)(secs / 3600),
                 (int)(secs % 3600 / 60));
    else
        snprintf(buf, len, "%lldd%02dh", (long long)(secs / 86400),
                 (int)(secs % 86400 / 3600));
    return buf;
}

/* "last seen 2m13s ago", or the words for a node never seen alive */
static void seen_words(char *dst, size_t cap, const pmm_status_row *r)
{
    char ago[32];

    if (r->last_seen >= 0)
        snprintf(dst, cap, "last seen %s ago",
                 pmm_format_ago(r->last_seen, ago, sizeof(ago)));
    else
        snprintf(dst, cap, "not seen alive since this daemon started");
}

void pmm_status_reasons(pmm_status_row *rows, size_t n,
                        const char *removed_why, int64_t removed_ago)
{
    const pmm_status_row *me = NULL;
    for (size_t i = 0; i < n; i++)
        if (rows[i].self && rows[i].proto_min != 0) me = &rows[i];
    for (size_t i = 0; i < n; i++) {
        pmm_status_row *r = &rows[i];
        char seen[96], ago[32];

        r->reason[0] = '\0';
        if (r->state == 'A')
            r->last_seen = -1;
        seen_words(seen, sizeof(seen), r);
        switch (r->state) {
        case 'S':
            if (r->db_reason[0] != '\0')
                snprintf(r->reason, sizeof(r->reason), "%s", r->db_reason);
            else
                snprintf(r->reason, sizeof(r->reason),
                         "database not in sync (%s)",
                         r->db_state[0] ? r->db_state : "unknown");
            break;
        case '?':
            snprintf(r->reason, sizeof(r->reason),
                     "suspect: missed probes, nobody refuted it yet; %s",
                     seen);
            break;
        case 'D':
            if (strcmp(r->gossip_state, "unknown") == 0)
                snprintf(r->reason, sizeof(r->reason),
                         "ERROR: unreachable: never heard from since this "
                         "daemon started");
            else
                snprintf(r->reason, sizeof(r->reason),
                         "ERROR: unreachable (dead); %s", seen);
            break;
        case 'L':
            snprintf(r->reason, sizeof(r->reason),
                     "left: stopped gracefully; %s", seen);
            break;
        default:
            break;
        }
        /* a node this one cannot talk to (refused on the node API both
         * ways): the first thing to fix, whatever its letter */
        if (me != NULL && r != me && r->proto_min != 0 &&
            (r->state == 'A' || r->state == 'S' || r->state == '?') &&
            !pmm_proto_overlap(r->proto_min, r->proto_max, me->proto_min,
                               me->proto_max))
            snprintf(r->reason, sizeof(r->reason),
                     "ERROR: protocol versions %u..%u (build %s) do not "
                     "overlap ours (%u..%u): its node API requests are "
                     "refused; upgrade the older build",
                     r->proto_min, r->proto_max,
                     r->version[0] ? r->version : "before versioning",
                     me->proto_min, me->proto_max);
        /* a dead or departed node's figures are stale: not shown */
        if (r->state == 'D' || r->state == 'L') {
            r->uptime = -1;
            r->load = -1;
            r->mem = -1;
            r->disk = -1;
        }
        if (r->self && removed_why != NULL) {
            r->removed = true;
            snprintf(r->reason, sizeof(r->reason),
                     "removed from the cluster %s ago (%s): takes no part; "
                     "pmgcm join or create to take part again",
                     pmm_format_ago(removed_ago, ago, sizeof(ago)),
                     removed_why);
        }
    }
}

static int row_cmp(const void *a, const void *b)
{
    const pmm_status_row *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    return c != 0 ? c : strcmp(x->id, y->id);
}

void pmm_status_sort(pmm_status_row *rows, size_t n)
{
    if (n > 1)
        qsort(rows, n, sizeof(*rows), row_cmp);
}

char *pmm_format_uptime(int64_t secs, char *buf, size_t len)
{
    int64_t days, hours, mins;

    if (secs < 0) {
        snprintf(buf, len, "-");
        return buf;
    }
    days = secs / 86400;
    hours = secs % 86400 / 3600;
    mins = secs % 3600 / 60;
    if (days == 0)
        snprintf(buf, len, "%02d:%02d", (int)hours, (int)mins);
    else
        snprintf(buf, len, "%lld %s %02d:%02d", (long long)days,
                 days == 1 ? "day" : "days", (int)hours, (int)mins);
    return buf;
}

/* Copies s for a terminal: control and non-ASCII bytes become '?'. */
#define term_safe(dst, cap, s) pmm_printable(dst, cap, s)

#define STATUS_HEADER                                                         \
    "NAME(CID)--------------IPADDRESS----ROLE-STATE---------UPTIME---LOAD-" \
    "---MEM---DISK\n"

int pmm_status_render_text(pmm_buf *b, const pmm_status_row *rows, size_t n)
{
    pmm_buf_puts(b, STATUS_HEADER);
    for (size_t i = 0; i < n; i++) {
        const pmm_status_row *r = &rows[i];
        char name[GSP_NAME_MAX + 1], namecid[GSP_NAME_MAX + 16];
        char ip[48], role[PMM_ROLE_MAX + 1], up[32], load[32], mem[16],
            disk[16], why[PMM_STATUS_REASON_MAX + 1];

        term_safe(name, sizeof(name), r->name);
        term_safe(ip, sizeof(ip), r->ip);
        term_safe(role, sizeof(role), r->role);
        snprintf(namecid, sizeof(namecid), "%s(%u)", name, (unsigned)r->cid);
        pmm_format_uptime(r->uptime, up, sizeof(up));
        if (r->load >= 0)
            snprintf(load, sizeof(load), "%.2f", r->load);
        else
            strcpy(load, "-");
        /* "%5s%%" as in PMG; unknown values are a bare "-" in that slot */
        if (r->mem >= 0)
            snprintf(mem, sizeof(mem), "%5d%%", r->mem);
        else
            snprintf(mem, sizeof(mem), "%6s", "-");
        if (r->disk >= 0)
            snprintf(disk, sizeof(disk), "%5d%%", r->disk);
        else
            snprintf(disk, sizeof(disk), "%6s", "-");
        term_safe(why, sizeof(why), r->reason);
        pmm_buf_printf(b, "%-20s %-15s %-6s %c %15s %6s %s %s%s%s\n", namecid,
                       ip, role, r->state, up, load, mem, disk,
                       why[0] ? "  " : "", why);
    }
    /* below the table, while builds differ (a rolling upgrade) */
    bool mixed = false;
    for (size_t i = 1; i < n; i++)
        if (rows[i].has_meta && rows[0].has_meta &&
            strcmp(rows[i].version, rows[0].version) != 0)
            mixed = true;
    if (mixed) {
        pmm_buf_puts(b, "versions:");
        for (size_t i = 0; i < n; i++) {
            bool seen = false;
            if (!rows[i].has_meta) continue;
            for (size_t k = 0; k < i; k++)
                if (rows[k].has_meta &&
                    strcmp(rows[k].version, rows[i].version) == 0)
                    seen = true;
            if (seen) continue;
            char v[PMM_BUILD_VERSION_MAX + 1];
            term_safe(v, sizeof(v), rows[i].version);
            pmm_buf_printf(b, "%s %s (", i ? ";" : "",
                           v[0] ? v : "before versioning");
            bool first = true;
            for (size_t k = i; k < n; k++) {
                char name[GSP_NAME_MAX + 1];
                if (!rows[k].has_meta ||
                    strcmp(rows[k].version, rows[i].version) != 0)
                    continue;
                term_safe(name, sizeof(name), rows[k].name);
                pmm_buf_printf(b, "%s%s", first ? "" : ", ", name);
                first = false;
            }
            pmm_buf_puts(b, ")");
        }
        pmm_buf_puts(b, "\n");
    }
    /* below the table (PMG's lines stay as they are): data a node keeps
     * until an admin clears it */
    for (size_t i = 0; i < n; i++) {
        const pmm_status_row *r = &rows[i];
        char name[GSP_NAME_MAX + 1];

        if (!r->has_db)
            continue;
        term_safe(name, sizeof(name), r->name);
        if (r->db_kept > 0 || r->db_divergence > 0)
            pmm_buf_printf(b, "note: %s keeps %u backup record(s) and %llu "
                           "divergence record(s) of replaced or unsent rows "
                           "(pmgcm backups, on %s)\n", name, r->db_kept,
                           (unsigned long long)r->db_divergence, name);
    }
    return b->err;
}

/* A number rounded to `places` decimals (as "%.*f" printed it). */
static json_t *jround(double v, int places)
{
    double f = places == 2 ? 100.0 : 1000.0;
    /* (v >= 0 here; no libm in the daemon) */
    return json_real((double)(long long)(v * f + 0.5) / f);
}

static json_t *row_json(const pmm_status_row *r)
{
    char st[2] = {r->state, '\0'};
    json_t *o = json_pack(
        "{s:o, s:I, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:b,"
        " s:o, s:o}",
        "name", pmm_jstrz(r->name), "cid", (json_int_t)r->cid,
        "ip", pmm_jstrz(r->ip), "role", pmm_jstrz(r->role), "state", st,
        "uptime", r->uptime >= 0 ? json_integer(r->uptime) : json_null(),
        "load", r->load >= 0 ? jround(r->load, 2) : json_null(),
        "mem", r->mem >= 0 ? json_integer(r->mem) : json_null(),
        "disk", r->disk >= 0 ? json_integer(r->disk) : json_null(),
        "id", pmm_jstrz(r->id), "gossip_state", pmm_jstrz(r->gossip_state),
        "port", (json_int_t)r->port, "self", r->self,
        "reason", pmm_jstrz(r->reason),
        "last_seen", r->last_seen >= 0 ? json_integer(r->last_seen)
                                       : json_null());
    if (o == NULL) return NULL;
    /* a member whose row could not be built in full (out of memory)
     * fails the whole answer: never a row silently missing a part */
    int bad = 0;
    if (r->removed) bad |= json_object_set_new(o, "removed", json_true());
    /* versions: known once the node's metadata was read */
    if (r->proto_min != 0) {
        bad |= json_object_set_new(o, "version", r->version[0]
                                                     ? pmm_jstrz(r->version)
                                                     : json_null());
        bad |= json_object_set_new(o, "protocol",
                                   json_pack("{s:I, s:I}", "min",
                                             (json_int_t)r->proto_min, "max",
                                             (json_int_t)r->proto_max));
    }
    if (r->has_db) {
        json_t *origins = json_array();
        for (uint32_t k = 0; origins && k < r->n_origins; k++)
            bad |= json_array_append_new(
                origins, json_pack("{s:I, s:I, s:I}", "cid",
                                   (json_int_t)r->origins[k].cid, "seq",
                                   (json_int_t)r->origins[k].seq, "behind",
                                   (json_int_t)r->origins[k].behind));
        bad |= json_object_set_new(
            o, "db",
            json_pack("{s:o, s:o, s:{s:I, s:I}, s:I, s:I, s:I, s:o, s:o}",
                      "state", pmm_jstrz(r->db_state), "reason",
                      pmm_jstrz(r->db_reason), "kept", "backups",
                      (json_int_t)r->db_kept, "divergence",
                      (json_int_t)r->db_divergence, "epoch",
                      (json_int_t)r->db_epoch, "seq", (json_int_t)r->db_seq,
                      "lag_changes", (json_int_t)r->lag_changes,
                      "lag_seconds", jround(r->lag_seconds, 3), "origins",
                      origins));
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *pmm_status_rows_json(const pmm_status_row *rows, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, row_json(&rows[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

int pmm_status_write_json(pmm_buf *b, const pmm_status_row *rows, size_t n)
{
    return pmm_json_put(b, pmm_status_rows_json(rows, n));
}

/* ---- reading rows back -------------------------------------------------- */

static int get_str(const pmm_json *o, const char *key, char *dst, size_t cap,
                   bool required, bool allow_empty)
{
    const pmm_json *v = pmm_json_get(o, key);

    if (v == NULL)
        return required ? -ENOENT : 0;
    if (v->type != PMM_JSON_STRING || v->str_len >= cap ||
        strlen(v->str) != v->str_len || (!allow_empty && v->str_len == 0))
        return -EINVAL;
    memcpy(dst, v->str, v->str_len + 1);
    return 0;
}

/* Integer in [lo, hi]; null gives *out = null_val when allowed. */
static int get_int(const pmm_json *o, const char *key, double lo, double hi,
                   bool nullable, int64_t null_val, int64_t *out)
{
    const pmm_json *v = pmm_json_get(o, key);

    if (v == NULL)
        return -ENOENT;
    if (v->type == PMM_JSON_NULL && nullable) {
        *out = null_val;
        return 0;
    }
    /* an integer in range (NaN fails the first test; no libm floor) */
    if (v->type != PMM_JSON_NUMBER || !(v->num >= lo && v->num <= hi) ||
        v->num != (double)(int64_t)v->num)
        return -EINVAL;
    *out = (int64_t)v->num;
    return 0;
}

/* A number that converts to uint64_t (a larger double is undefined
 * behaviour to convert). */
static bool u64_ok(const pmm_json *v)
{
    return v != NULL && v->type == PMM_JSON_NUMBER && v->num >= 0 &&
           v->num < 18446744073709551616.0;
}

/* The fields every row has: name, cid, ip, role, state, uptime, load, mem,
 * disk. 0, or the name of the bad one. */
static const char *row_basics(const pmm_json *o, pmm_status_row *r)
{
    char st[4] = "";
    int64_t v;
    const pmm_json *j;

    if (o->type != PMM_JSON_OBJECT)
        return "member";
    if (get_str(o, "name", r->name, sizeof(r->name), true, false))
        return "name";
    if (get_int(o, "cid", 0, UINT32_MAX, false, 0, &v))
        return "cid";
    r->cid = (uint32_t)v;
    if (get_str(o, "ip", r->ip, sizeof(r->ip), true, false))
        return "ip";
    if (get_str(o, "role", r->role, sizeof(r->role), true, false))
        return "role";
    if (get_str(o, "state", st, sizeof(st), true, false) ||
        strlen(st) != 1 || strchr("A?DLS", st[0]) == NULL)
        return "state";
    r->state = st[0];
    if (get_int(o, "uptime", 0, 9007199254740992.0, true, -1, &r->uptime))
        return "uptime";
    j = pmm_json_get(o, "load");
    if (j != NULL && j->type == PMM_JSON_NULL)
        r->load = -1;
    else if (j != NULL && j->type == PMM_JSON_NUMBER && j->num >= 0 &&
             j->num <= 1e7)
        r->load = j->num;
    else
        return "load";
    if (get_int(o, "mem", 0, 100, true, -1, &v))
        return "mem";
    r->mem = (int)v;
    if (get_int(o, "disk", 0, 100, true, -1, &v))
        return "disk";
    r->disk = (int)v;
    r->has_meta = r->mem >= 0;
    return NULL;
}

/* The optional fields: id, gossip_state, port, self. */
static const char *row_extras(const pmm_json *o, pmm_status_row *r)
{
    int64_t v;
    const pmm_json *j;

    if (get_str(o, "id", r->id, sizeof(r->id), false, true))
        return "id";
    if (get_str(o, "gossip_state", r->gossip_state, sizeof(r->gossip_state),
                false, true))
        return "gossip_state";
    if (pmm_json_get(o, "port") != NULL) {
        if (get_int(o, "port", 0, 65535, false, 0, &v))
            return "port";
        r->port = (uint16_t)v;
    }
    j = pmm_json_get(o, "self");
    if (j != NULL) {
        if (j->type != PMM_JSON_BOOL)
            return "self";
        r->self = j->b;
    }
    if (get_str(o, "reason", r->reason, sizeof(r->reason), false, true))
        return "reason";
    r->last_seen = -1;
    j = pmm_json_get(o, "last_seen");
    if (j != NULL && get_int(o, "last_seen", 0, 9007199254740992.0, true, -1,
                             &r->last_seen))
        return "last_seen";
    j = pmm_json_get(o, "removed");
    if (j != NULL) {
        if (j->type != PMM_JSON_BOOL)
            return "removed";
        r->removed = j->b;
    }
    j = pmm_json_get(o, "version");
    if (j != NULL && j->type != PMM_JSON_NULL &&
        get_str(o, "version", r->version, sizeof(r->version), false, true))
        return "version";
    j = pmm_json_get(o, "protocol");
    if (j != NULL) {
        const pmm_json *lo = pmm_json_get(j, "min"), *hi = pmm_json_get(j, "max");
        if (j->type != PMM_JSON_OBJECT || !u64_ok(lo) || !u64_ok(hi) ||
            lo->num < 1 || hi->num > UINT32_MAX || hi->num < lo->num ||
            lo->num != (double)(uint32_t)lo->num ||
            hi->num != (double)(uint32_t)hi->num)
            return "protocol";
        r->proto_min = (uint32_t)lo->num;
        r->proto_max = (uint32_t)hi->num;
    }
    return NULL;
}

/* The store's object "db" (absent or null: no store): state, position,
 * lag, per-origin positions, reason, kept records. */
static const char *row_db(const pmm_json *o, pmm_status_row *r)
{
    const pmm_json *j = pmm_json_get(o, "db");
    const pmm_json *e, *q, *lc, *ls, *oa, *kp;

    if (j == NULL || j->type == PMM_JSON_NULL)
        return NULL;
    if (j->type != PMM_JSON_OBJECT ||
        get_str(j, "state", r->db_state, sizeof(r->db_state), true, false))
        return "db";
    e = pmm_json_get(j, "epoch");
    q = pmm_json_get(j, "seq");
    lc = pmm_json_get(j, "lag_changes");
    ls = pmm_json_get(j, "lag_seconds");
    if (!u64_ok(e) || !u64_ok(q) || !u64_ok(lc) || !ls ||
        ls->type != PMM_JSON_NUMBER || ls->num < 0)
        return "db";
    oa = pmm_json_get(j, "origins");
    if (oa != NULL && oa->type == PMM_JSON_ARRAY) {
        for (const pmm_json *it = oa->child;
             it && r->n_origins < PMM_META_ORIGINS_MAX; it = it->next) {
            const pmm_json *oc = pmm_json_get(it, "cid"),
                           *os = pmm_json_get(it, "seq"),
                           *ob = pmm_json_get(it, "behind");
            if (!u64_ok(oc) || oc->num > UINT32_MAX || !u64_ok(os) ||
                !u64_ok(ob))
                return "db.origins";
            r->origins[r->n_origins].cid = (uint32_t)oc->num;
            r->origins[r->n_origins].seq = (uint64_t)os->num;
            r->origins[r->n_origins].behind = (uint64_t)ob->num;
            r->n_origins++;
        }
    }
    /* optional: reason, kept */
    if (get_str(j, "reason", r->db_reason, sizeof(r->db_reason), false,
                true))
        return "db.reason";
    kp = pmm_json_get(j, "kept");
    if (kp != NULL && kp->type == PMM_JSON_OBJECT) {
        const pmm_json *kb = pmm_json_get(kp, "backups"),
                       *kd = pmm_json_get(kp, "divergence");
        if (!u64_ok(kb) || kb->num > UINT32_MAX || !u64_ok(kd))
            return "db.kept";
        r->db_kept = (uint32_t)kb->num;
        r->db_divergence = (uint64_t)kd->num;
    }
    r->has_db = true;
    r->db_epoch = (uint64_t)e->num;
    r->db_seq = (uint64_t)q->num;
    r->lag_changes = (uint64_t)lc->num;
    r->lag_seconds = ls->num;
    return NULL;
}

int pmm_status_from_json(const pmm_json *arr, pmm_status_row **rows_out,
                         size_t *n_out, char *err, size_t errlen)
{
    pmm_status_row *rows;
    size_t n = 0;
    const char *bad = NULL;

    *rows_out = NULL;
    *n_out = 0;
    if (arr == NULL || arr->type != PMM_JSON_ARRAY) {
        snprintf(err, errlen, "members is not an array");
        return -EINVAL;
    }
    rows = calloc(arr->n_child ? arr->n_child : 1, sizeof(*rows));
    if (rows == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (const pmm_json *o = arr->child; o != NULL; o = o->next, n++) {
        if ((bad = row_basics(o, &rows[n])) != NULL ||
            (bad = row_extras(o, &rows[n])) != NULL ||
            (bad = row_db(o, &rows[n])) != NULL) {
            snprintf(err, errlen, "member %zu: missing or invalid '%s'",
                     n + 1, bad);
            free(rows);
            return -EINVAL;
        }
    }
    *rows_out = rows;
    *n_out = n;
    return 0;
}
