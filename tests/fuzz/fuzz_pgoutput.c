/*
 * fuzz_pgoutput.c - the logical replication decoder (store/pgoutput.h) on
 * what a walsender, or anyone answering on its socket, could send: a
 * sequence of frames (fuzz.h), each decoded as a pgoutput message by one
 * decoder (so Relation messages feed the rows after them) and also parsed
 * as a CopyData payload. Every decoded row must be well-formed JSON text
 * of the shape the decoder promises ('{' ... '}').
 */
#include "tests/fuzz/fuzz.h"
#include "store/pgoutput.h"

#include <stdlib.h>

static void check_json(const char *j)
{
    if (!j) return;
    size_t n = strlen(j);
    if (n < 2 || j[0] != '{' || j[n - 1] != '}') abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pst_pgo *d = pst_pgo_new();
    if (!d) return 0;
    while (size > 0) {
        size_t len = size >= 2 ? (size_t)(data[0] | data[1] << 8) : 0;
        const uint8_t *f = data + (size >= 2 ? 2 : size);
        size_t left = size >= 2 ? size - 2 : 0;
        if (len > left) len = left;
        pst_pgo_copy c;
        (void)pst_pgo_copy_parse(f, len, &c);
        pst_pgo_msg m;
        if (pst_pgo_decode(d, f, len, &m) == 0) {
            check_json(m.old_json);
            check_json(m.new_json);
            if ((m.kind == PST_PGO_INSERT || m.kind == PST_PGO_UPDATE ||
                 m.kind == PST_PGO_DELETE) && !m.rel)
                abort();
            for (uint32_t i = 0; i < m.n_rels; i++)
                if (!m.rels[i]) abort();
            pst_pgo_msg_clear(&m);
        }
        data = f + len;
        size = left - len;
        if (size == 0 && left == 0) break;
    }
    pst_pgo_free(d);
    return 0;
}
