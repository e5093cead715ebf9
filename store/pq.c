/*
 * pq.c - libpq, loaded at the first connection instead of at program start.
 *
 * Linking libpq pulls in some twenty shared libraries (OpenSSL, GnuTLS,
 * Kerberos, LDAP, SASL, p11-kit...) whose mapping, relocations and
 * constructors cost every pmgclusterd about 5 MB of resident memory, even
 * one that never talks to a database (db_conninfo unset). So the store
 * does not link libpq: every libpq function it calls is defined here and
 * forwards to the real one, resolved with dlopen("libpq.so.5") the first
 * time a connection is made (pst_pq_load, thread safe). Until then, and if
 * the library cannot be loaded, no libpq code runs: connecting fails with
 * the loader's message (pst_pq_load) and the functions that take a result
 * or connection only ever see the NULL that failure left.
 *
 * Adding a libpq call to the store: add it to PQ_FUNCS below.
 */
#include "store/internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define PQ_SONAME "libpq.so.5"

/* X(return type, name, (parameters), (arguments)) */
#define PQ_FUNCS(X)                                                          \
    X(char *, PQgetvalue, (const PGresult *res, int tup, int field),         \
      (res, tup, field))                                                     \
    X(ExecStatusType, PQresultStatus, (const PGresult *res), (res))          \
    X(PGresult *, PQexecParams,                                              \
      (PGconn *conn, const char *command, int nParams,                       \
       const Oid *paramTypes, const char *const *paramValues,                \
       const int *paramLengths, const int *paramFormats, int resultFormat),  \
      (conn, command, nParams, paramTypes, paramValues, paramLengths,        \
       paramFormats, resultFormat))                                          \
    X(PGresult *, PQexec, (PGconn *conn, const char *query), (conn, query)) \
    X(int, PQntuples, (const PGresult *res), (res))                          \
    X(int, PQnfields, (const PGresult *res), (res))                          \
    X(int, PQgetisnull, (const PGresult *res, int tup, int field),           \
      (res, tup, field))                                                     \
    X(PGresult *, PQgetResult, (PGconn *conn), (conn))                       \
    X(char *, PQcmdTuples, (PGresult *res), (res))                           \
    X(int, PQputCopyEnd, (PGconn *conn, const char *errormsg),               \
      (conn, errormsg))                                                      \
    X(int, PQgetlength, (const PGresult *res, int tup, int field),           \
      (res, tup, field))                                                     \
    X(PGTransactionStatusType, PQtransactionStatus, (const PGconn *conn),    \
      (conn))                                                                \
    X(int, PQsocket, (const PGconn *conn), (conn))                           \
    X(PQnoticeProcessor, PQsetNoticeProcessor,                               \
      (PGconn *conn, PQnoticeProcessor proc, void *arg), (conn, proc, arg))  \
    X(int, PQputCopyData, (PGconn *conn, const char *buffer, int nbytes),    \
      (conn, buffer, nbytes))                                                \
    X(PostgresPollingStatusType, PQconnectPoll, (PGconn *conn), (conn))      \
    X(int, PQsetnonblocking, (PGconn *conn, int arg), (conn, arg))           \
    X(int, PQsendQuery, (PGconn *conn, const char *query), (conn, query))   \
    X(char *, PQresultErrorMessage, (const PGresult *res), (res))            \
    X(PGnotify *, PQnotifies, (PGconn *conn), (conn))                        \
    X(int, PQisBusy, (PGconn *conn), (conn))                                 \
    X(int, PQgetCopyData, (PGconn *conn, char **buffer, int async),          \
      (conn, buffer, async))                                                 \
    X(int, PQflush, (PGconn *conn), (conn))                                  \
    X(char *, PQescapeLiteral, (PGconn *conn, const char *str, size_t len),  \
      (conn, str, len))                                                      \
    X(char *, PQescapeIdentifier,                                            \
      (PGconn *conn, const char *str, size_t len), (conn, str, len))         \
    X(int, PQconsumeInput, (PGconn *conn), (conn))                           \
    X(PGconn *, PQconnectdb, (const char *conninfo), (conninfo))             \
    X(PGconn *, PQconnectdbParams,                                           \
      (const char *const *keywords, const char *const *values,               \
       int expand_dbname),                                                   \
      (keywords, values, expand_dbname))                                     \
    X(char *, PQresultErrorField, (const PGresult *res, int fieldcode),      \
      (res, fieldcode))                                                      \
    X(PGconn *, PQconnectStart, (const char *conninfo), (conninfo))         \
    X(PGresult *, PQprepare,                                                 \
      (PGconn *conn, const char *stmtName, const char *query, int nParams,   \
       const Oid *paramTypes),                                               \
      (conn, stmtName, query, nParams, paramTypes))                          \
    X(PGresult *, PQexecPrepared,                                            \
      (PGconn *conn, const char *stmtName, int nParams,                      \
       const char *const *paramValues, const int *paramLengths,              \
       const int *paramFormats, int resultFormat),                           \
      (conn, stmtName, nParams, paramValues, paramLengths, paramFormats,     \
       resultFormat))

/* The ones that must also work on NULL before anything is loaded. */
#define PQ_NULL_SAFE(X)                                                      \
    X(void, PQclear, (PGresult *res), (res))                                 \
    X(void, PQfinish, (PGconn *conn), (conn))                                \
    X(void, PQfreemem, (void *ptr), (ptr))                                   \
    X(ConnStatusType, PQstatus, (const PGconn *conn), (conn))                \
    X(char *, PQerrorMessage, (const PGconn *conn), (conn))

static struct {
#define PQ_FIELD(ret, name, params, args) ret(*name) params;
    PQ_FUNCS(PQ_FIELD)
    PQ_NULL_SAFE(PQ_FIELD)
#undef PQ_FIELD
} pq;

static pthread_once_t pq_once = PTHREAD_ONCE_INIT;
static char pq_err[256]; /* set once by pq_load_once, then read only */
static bool pq_ok;

static void pq_load_once(void)
{
    void *h = dlopen(PQ_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(pq_err, sizeof(pq_err), "cannot load %s: %s", PQ_SONAME,
                 e ? e : "unknown error");
        return;
    }
    /* POSIX: dlsym's void * holds a function pointer */
#define PQ_SYM(ret, name, params, args)                                      \
    {                                                                        \
        void *sym = dlsym(h, #name);                                         \
        memcpy(&pq.name, &sym, sizeof(sym));                                 \
    }                                                                        \
    if (!pq.name) {                                                          \
        snprintf(pq_err, sizeof(pq_err), "%s has no %s", PQ_SONAME, #name); \
        return;                                                              \
    }
    PQ_FUNCS(PQ_SYM)
    PQ_NULL_SAFE(PQ_SYM)
#undef PQ_SYM
    pq_ok = true; /* the handle stays open for the life of the process */
}

int pst_pq_load(char *err, size_t errlen)
{
    pthread_once(&pq_once, pq_load_once);
    if (pq_ok) return 0;
    if (err && errlen) snprintf(err, errlen, "%s", pq_err);
    return -ELIBACC;
}

bool pst_pq_loaded(void)
{
    pthread_once(&pq_once, pq_load_once);
    return pq_ok;
}

/* Every forwarder loads on first use; a connection attempt that cannot
 * load the library fails as libpq fails on out-of-memory (NULL), so
 * pst_connect calls pst_pq_load first to say why. */
#define PQ_FWD(ret, name, params, args)                                      \
    ret name params                                                          \
    {                                                                        \
        pthread_once(&pq_once, pq_load_once);                                \
        if (!pq_ok) return (ret)0;                                           \
        return pq.name args;                                                 \
    }
PQ_FUNCS(PQ_FWD)
#undef PQ_FWD

void PQclear(PGresult *res)
{
    if (res && pst_pq_loaded()) pq.PQclear(res);
}

void PQfinish(PGconn *conn)
{
    if (conn && pst_pq_loaded()) pq.PQfinish(conn);
}

void PQfreemem(void *ptr)
{
    if (ptr && pst_pq_loaded()) pq.PQfreemem(ptr);
}

ConnStatusType PQstatus(const PGconn *conn)
{
    if (!conn || !pst_pq_loaded()) return CONNECTION_BAD;
    return pq.PQstatus(conn);
}

char *PQerrorMessage(const PGconn *conn)
{
    if (!pst_pq_loaded()) return pq_err;
    return pq.PQerrorMessage(conn);
}
