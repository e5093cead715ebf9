/*
 * detach.c - pst_detach: a database taken out of its cluster's state with
 * no daemon running (`pmgcm detach`): a restored dump of a node is a
 * plain database again.
 */
#define _GNU_SOURCE
#include "store/internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void say(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *out, size_t cap, const char *fmt, ...)
{
    size_t n = strnlen(out, cap);
    if (n + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + n, cap - n, fmt, ap);
    va_end(ap);
}

/* Who else uses this database as a daemon would: its store sessions
 * (application_name pmgcm-store), its replication connections (pmgcm_*)
 * and active slots. */
static int owners(PGconn *c, char *buf, size_t len, int *n, char *err,
                  size_t el)
{
    PGresult *r = PQexec(
        c, "SELECT coalesce(string_agg(DISTINCT who, ', '), ''), count(*)"
           " FROM (SELECT application_name AS who FROM"
           " pg_stat_activity WHERE datname = current_database() AND pid <>"
           " pg_backend_pid() AND (application_name = 'pmgcm-store' OR"
           " application_name LIKE 'pmgcm\\_%') UNION ALL SELECT 'slot ' ||"
           " slot_name || ' (active)' FROM"
           " pg_replication_slots WHERE database = current_database() AND"
           " slot_name LIKE 'pmgcm\\_%' AND active) o");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    *n = atoi(PQgetvalue(r, 0, 1));
    snprintf(buf, len, "%d connection(s): %s", *n, PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

int pst_detach(const char *conninfo, bool force, char *report, size_t replen,
               char *err, size_t errlen)
{
    int rc, busy = 0;
    char who[512], e2[256];
    PGresult *r = NULL;

    if (conninfo == NULL || report == NULL || replen == 0 || err == NULL)
        return -EINVAL;
    report[0] = '\0';
    err[0] = '\0';
    PGconn *c = pst_connect(conninfo, NULL, err, errlen);
    if (c == NULL) return PST_EDB;
    if ((rc = pst_q1(c, "SELECT to_regclass('pmgcm.state') IS NOT NULL", 0,
                     NULL, &r, err, errlen)))
        goto out;
    bool has = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    r = NULL;
    if (!has) {
        say(report, replen, "no pmgcm schema in this database: nothing to "
            "detach\n");
        goto out;
    }
    if ((rc = owners(c, who, sizeof(who), &busy, err, errlen))) goto out;
    if (busy > 0 && !force) {
        snprintf(err, errlen, "a pmgclusterd uses this database (%s): stop "
                 "it first, or `pmgcm delete` the node from its cluster; "
                 "--force detaches anyway (its daemon then reads the "
                 "database as outside any cluster)", who);
        rc = -EBUSY;
        goto out;
    }
    if (busy > 0)
        say(report, replen, "--force: detaching while in use by %s\n", who);
    if ((rc = pst_exec(c, "BEGIN; SELECT pg_advisory_xact_lock(7947001)", err,
                       errlen)) ||
        (rc = pst_q1(c, "SELECT role, master, cid, cluster, epoch, seq FROM"
                        " pmgcm.state FOR UPDATE", 0, NULL, &r, err, errlen)))
        goto out;
    if (PQntuples(r) == 1)
        say(report, replen, "was: role %s%s%s, cid %s, cluster %.32s, "
            "position %s/%s\n", PQgetvalue(r, 0, 0),
            PQgetvalue(r, 0, 1)[0] ? ", master " : "", PQgetvalue(r, 0, 1),
            PQgetvalue(r, 0, 2),
            PQgetvalue(r, 0, 3)[0] ? PQgetvalue(r, 0, 3) : "-",
            PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
    PQclear(r);
    r = NULL;
    /* what leaving a cluster does (role.c), plus the cid and cluster: the
     * data stays, its positions stay (a `pmgcm create` numbers on) */
    if ((rc = pst_exec(c, "UPDATE pmgcm.state SET role = 'none', master = '',"
                          " cid = 0, cluster = '', capture_lsn = NULL,"
                          " master_lsn = NULL", err, errlen)))
        goto out;
    say(report, replen, "pmgcm.state: role none, no master, cid 0, no "
        "cluster\n");
    /* the write guard: every pmgcm_check / pmgcm_ocheck trigger */
    if ((rc = pst_q1(c, "SELECT format('DROP TRIGGER %I ON %s', t.tgname,"
                        " t.tgrelid::regclass) FROM pg_trigger t WHERE"
                        " t.tgname IN ('pmgcm_check', 'pmgcm_ocheck') AND NOT"
                        " t.tgisinternal ORDER BY 1", 0, NULL, &r, err,
                     errlen)))
        goto out;
    int ntrig = PQntuples(r);
    for (int i = 0; i < ntrig && rc == 0; i++)
        rc = pst_exec(c, PQgetvalue(r, i, 0), err, errlen);
    PQclear(r);
    r = NULL;
    if (rc) goto out;
    say(report, replen, "write guard: %d trigger(s) dropped (pmgcm_check, "
        "pmgcm_ocheck)\n", ntrig);
    /* outside a cluster: writes pass (the fence is not transactional:
     * last, right before the commit) */
    if ((rc = pst_exec(c, "SELECT setval('pmgcm.fence', 2)", err, errlen)) ||
        (rc = pst_exec(c, "COMMIT", err, errlen)))
        goto out;
    say(report, replen, "fence: 2 (outside a cluster): writes are taken\n");
    /* the slots a daemon made here would hold WAL back forever */
    if (pst_q1(c, "SELECT slot_name FROM pg_replication_slots WHERE database"
                  " = current_database() AND slot_name LIKE 'pmgcm\\_%' AND"
                  " NOT active", 0, NULL, &r, e2, sizeof(e2)) == 0) {
        for (int i = 0; i < PQntuples(r); i++) {
            const char *slot = PQgetvalue(r, i, 0);
            if (pst_slot_drop(c, slot, e2, sizeof(e2)) == 0)
                say(report, replen, "replication slot %s dropped\n", slot);
            else
                say(report, replen, "replication slot %s kept: %s\n", slot,
                    e2);
        }
        PQclear(r);
        r = NULL;
    }
    say(report, replen, "kept: the data, pmgcm.log and its positions, "
        "pmgcm.backups, pmgcm.divergence; `pmgcm create` on this node starts "
        "a cluster with it, `pmgcm join` replaces it with the master's\n");
out:
    if (r) PQclear(r);
    if (rc && rc != -EBUSY) {
        char e3[256];
        pst_exec(c, "ROLLBACK", e3, sizeof(e3));
    }
    PQfinish(c);
    return rc;
}
