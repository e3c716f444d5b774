/* Multi-index hashing kernels for MultiIndex (registry/index/multi.py).
 *
 * A code of B bytes is cut into m = B/2 chunks of 16 bits (big-endian: chunk c is bytes 2c and
 * 2c+1). For each chunk a table maps each of the 65536 chunk values to the rows holding it.
 *
 * Rows are stored Elias-Fano style, about 18 bits each instead of 32: a row's low 16 bits and,
 * in unary, its high part (row >> 16, one of H = ceil(n / 65536) values). Each chunk has a
 * directory ``dirs[c]`` of 65537 (position, byte offset) pairs and a byte blob ``blob[c]``.
 * Bucket v holds k = pos[v+1] - pos[v] rows, ascending; at byte offset off[v] of the blob it
 * stores ceil((k + H) / 8) bytes of high bits (its i-th row sets bit ``high + i``), then its k
 * low parts as little-endian uint16. A bucket is thus read with one directory look-up and one
 * contiguous stretch of bytes, as plain row lists would be, at 2.25 bytes a row instead of 4.
 * Decoding walks the set bits with count-trailing-zeros, a few nanoseconds a row.
 *
 * Pigeonhole: if a code is within distance D of the query and chunk c is probed to radius r_c
 * (every value within r_c bits of the query's chunk), the code is found unless every probed
 * chunk differs by more than r_c, which needs D >= sum(r_c + 1). So probing radii with
 * sum(r_c + 1) > E finds every code within E: the search is exact to E. Beyond E it finds most
 * codes, not all (the caller measures how many).
 *
 * Candidates are gathered first, then checked with software prefetch: checking is bound by
 * random reads of the codes, and prefetching 24 rows ahead roughly halves its cost (measured in
 * bench/index.py). The GIL is released while a kernel runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_VALUES 65536
#define MAX_PROBE 3
#define PREFETCH 24

static inline uint32_t chunk_of(const uint8_t *code, int c) {
    return ((uint32_t)code[2 * c] << 8) | code[2 * c + 1];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define POPCOUNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define POPCOUNT_CLONES
#endif

/* Hamming distance of two codes of nbytes (a multiple of 8). */
static inline int distance(const uint8_t *a, const uint8_t *b, int nbytes) {
    int d = 0;
    for (int i = 0; i < nbytes; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        d += __builtin_popcountll(x ^ y);
    }
    return d;
}

/* Number of high values: rows of n >> 16 differ by at most this many (0 for an empty table). */
static inline Py_ssize_t high_count(Py_ssize_t n) { return (n + 65535) >> 16; }

/* Bytes of one chunk's blob: an upper bound on the sum over buckets of ceil((k + H) / 8) + 2k,
 * plus 8 bytes of slack so a decoder may load whole 64-bit words at the end. */
static inline Py_ssize_t blob_bytes(Py_ssize_t n) {
    return 2 * n + (n + (Py_ssize_t)CHUNK_VALUES * high_count(n)) / 8 + CHUNK_VALUES + 16;
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* ---- build ------------------------------------------------------------------------------- */

/* Counting sort of the rows by their chunk value, writing each row's low part and high bit as
 * it is placed (rows are taken in ascending order, so each bucket's rows ascend). ``dirs`` gets
 * (position, byte offset) pairs. Returns -1 when the cursor array cannot be allocated. */
static int build_chunk(const uint8_t *codes, Py_ssize_t n, int nbytes, int c, uint32_t *dirs,
                       uint8_t *blob, Py_ssize_t blob_len) {
    uint32_t *cursor = malloc(CHUNK_VALUES * sizeof(uint32_t));
    if (!cursor) return -1;
    uint64_t h = (uint64_t)high_count(n);
    memset(cursor, 0, CHUNK_VALUES * sizeof(uint32_t));
    for (Py_ssize_t i = 0; i < n; i++) cursor[chunk_of(codes + i * nbytes, c)]++;
    uint64_t pos = 0, off = 0;
    for (int v = 0; v < CHUNK_VALUES; v++) {
        uint32_t k = cursor[v];
        dirs[2 * v] = (uint32_t)pos;
        dirs[2 * v + 1] = (uint32_t)off;
        cursor[v] = (uint32_t)pos;
        pos += k;
        off += (k + h + 7) / 8 + 2 * (uint64_t)k;
    }
    dirs[2 * CHUNK_VALUES] = (uint32_t)pos;
    dirs[2 * CHUNK_VALUES + 1] = (uint32_t)off;
    if ((Py_ssize_t)off + 8 > blob_len || off > UINT32_MAX) { free(cursor); return -2; }
    memset(blob, 0, blob_len);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = chunk_of(codes + i * nbytes, c);
        uint32_t start = dirs[2 * v], k = dirs[2 * v + 2] - start;
        uint32_t nth = cursor[v]++ - start;
        uint8_t *bucket = blob + dirs[2 * v + 1];
        uint64_t bit = ((uint64_t)i >> 16) + nth;
        bucket[bit >> 3] |= (uint8_t)(1u << (bit & 7));
        uint8_t *low = bucket + (k + h + 7) / 8 + 2 * (uint64_t)nth;
        low[0] = (uint8_t)(i & 0xff);
        low[1] = (uint8_t)((i >> 8) & 0xff);
    }
    free(cursor);
    return 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                               : PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

/* build(codes, nbytes, chunk, dirs, blob): fills the table of one chunk. */
static PyObject *mih_build(PyObject *self, PyObject *args) {
    PyObject *codes_o, *dirs_o, *blob_o;
    int nbytes, chunk;
    if (!PyArg_ParseTuple(args, "OiiOO", &codes_o, &nbytes, &chunk, &dirs_o, &blob_o))
        return NULL;
    if (nbytes <= 0 || nbytes % 8) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be a positive multiple of 8");
        return NULL;
    }
    if (chunk < 0 || chunk >= nbytes / 2) {
        PyErr_SetString(PyExc_ValueError, "chunk out of range");
        return NULL;
    }
    Py_buffer codes, dirs, blob;
    if (get_buffer(codes_o, &codes, 0, "codes") < 0) return NULL;
    if (get_buffer(dirs_o, &dirs, 1, "dirs") < 0) { PyBuffer_Release(&codes); return NULL; }
    if (get_buffer(blob_o, &blob, 1, "blob") < 0) {
        PyBuffer_Release(&codes); PyBuffer_Release(&dirs); return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = codes.len / nbytes;
    if (codes.len % nbytes || dirs.len != (CHUNK_VALUES + 1) * 8 || blob.len != blob_bytes(n) ||
        n > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match");
        goto done;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = build_chunk((const uint8_t *)codes.buf, n, nbytes, chunk, (uint32_t *)dirs.buf,
                         (uint8_t *)blob.buf, blob.len);
    Py_END_ALLOW_THREADS
    if (failed == -1) {
        PyErr_NoMemory();
        goto done;
    }
    if (failed) {
        PyErr_SetString(PyExc_ValueError, "a table this large does not fit 32-bit offsets");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&codes); PyBuffer_Release(&dirs); PyBuffer_Release(&blob);
    return result;
}

/* blob_bytes(n): the length in bytes of one chunk's blob for n rows. */
static PyObject *mih_blob_bytes(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must be >= 0");
        return NULL;
    }
    return PyLong_FromSsize_t(blob_bytes(n));
}

/* ---- search ------------------------------------------------------------------------------ */

typedef struct {
    uint32_t *rows;
    int32_t *dist;
    Py_ssize_t len, cap;
} hits_t;

static int hits_push(hits_t *h, uint32_t row, int32_t d) {
    if (h->len == h->cap) {
        Py_ssize_t cap = h->cap ? h->cap * 2 : 64;
        uint32_t *r = realloc(h->rows, cap * sizeof(uint32_t));
        if (!r) return -1;
        h->rows = r;
        int32_t *dd = realloc(h->dist, cap * sizeof(int32_t));
        if (!dd) return -1;
        h->dist = dd;
        h->cap = cap;
    }
    h->rows[h->len] = row;
    h->dist[h->len] = d;
    h->len++;
    return 0;
}

typedef struct {
    uint32_t *buf;
    Py_ssize_t cap;
    uint32_t *probe_c, *probe_v; /* room for every chunk's probes at MAX_PROBE */
    int corrupt;                 /* set when a bucket does not decode to rows below n */
} cand_t;

#define PROBES_PER_CHUNK (1 + 16 + 120 + 560)

/* Every 16-bit value within r bits of v, for r = 0..probe, appended to out. */
static int probe_values(uint32_t v, int probe, uint32_t *out) {
    int n = 0;
    out[n++] = v;
    if (probe >= 1)
        for (int i = 0; i < 16; i++) out[n++] = v ^ (1u << i);
    if (probe >= 2)
        for (int i = 0; i < 16; i++)
            for (int j = i + 1; j < 16; j++) out[n++] = v ^ (1u << i) ^ (1u << j);
    if (probe >= 3)
        for (int i = 0; i < 16; i++)
            for (int j = i + 1; j < 16; j++)
                for (int k = j + 1; k < 16; k++) out[n++] = v ^ (1u << i) ^ (1u << j) ^ (1u << k);
    return n;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The directory entry (position, byte offset) of value v in chunk c; entry v + 1 follows it. */
static inline const uint32_t *dir_entry(const uint32_t *dirs, uint32_t c, uint32_t v) {
    return dirs + (size_t)c * 2 * (CHUNK_VALUES + 1) + 2 * (size_t)v;
}

/* Grows cand->buf to hold at least ``need`` rows; -1 on allocation failure. */
static int cand_reserve(cand_t *cand, Py_ssize_t need) {
    if (need <= cand->cap) return 0;
    Py_ssize_t cap = cand->cap ? cand->cap : 4096;
    while (cap < need) cap *= 2;
    uint32_t *b = realloc(cand->buf, cap * sizeof(uint32_t));
    if (!b) return -1;
    cand->buf = b;
    cand->cap = cap;
    return 0;
}

/* The candidate rows of one query (every row of every probed bucket, with repeats when a row
 * is in several) into cand->buf; returns how many, or -1 on allocation failure. */
static Py_ssize_t gather(Py_ssize_t n, int nbytes, const uint32_t *dirs, const uint8_t *blob,
                         Py_ssize_t blob_len, const uint8_t *q, const uint8_t *probes,
                         cand_t *cand) {
    /* Every probed (chunk, value), gathered first so that their directory entries and then
     * their buckets can be prefetched together instead of missing the cache one by one. */
    uint32_t values[PROBES_PER_CHUNK];
    uint32_t *probe_c = cand->probe_c, *probe_v = cand->probe_v;
    int m = nbytes / 2, np_ = 0;
    const uint64_t h = (uint64_t)high_count(n);
    Py_ssize_t count = 0;
    for (int c = 0; c < m; c++) {
        if (probes[c] == 0xff) continue; /* chunk not probed */
        int nv = probe_values(chunk_of(q, c), probes[c], values);
        for (int k = 0; k < nv; k++) {
            probe_c[np_] = (uint32_t)c;
            probe_v[np_++] = values[k];
        }
    }
    for (int k = 0; k < np_; k++) __builtin_prefetch(dir_entry(dirs, probe_c[k], probe_v[k]));
    for (int k = 0; k < np_; k++)
        __builtin_prefetch(blob + (size_t)probe_c[k] * blob_len
                           + dir_entry(dirs, probe_c[k], probe_v[k])[1]);
    for (int k = 0; k < np_; k++) {
        const uint32_t *d = dir_entry(dirs, probe_c[k], probe_v[k]);
        uint32_t rows = d[2] - d[0];
        if (!rows) continue;
        if (cand_reserve(cand, count + rows) < 0) return -1;
        /* Decode the bucket: its i-th set bit, at bit b, is row ((b - i) << 16) | low[i]. */
        const uint8_t *bucket = blob + (size_t)probe_c[k] * blob_len + d[1];
        const size_t high_bytes = (rows + h + 7) / 8;
        const uint8_t *low = bucket + high_bytes;
        uint32_t *out = cand->buf + count;
        size_t byte = 0;
        uint64_t word = load64(bucket);
        /* Tables from a snapshot are checksummed, and their directories checked on load; a
         * bucket that still does not decode (too few high bits, a row past the codes) stops
         * the search instead of reading past its bucket or the codes. */
        for (uint32_t i = 0; i < rows; i++) {
            while (!word) {
                byte += 8;
                if (byte >= high_bytes) { cand->corrupt = 1; return -1; }
                word = load64(bucket + byte);
            }
            uint64_t bit = byte * 8 + (uint64_t)__builtin_ctzll(word);
            word &= word - 1;
            uint64_t row = ((bit - i) << 16) | (uint32_t)low[2 * i] | ((uint32_t)low[2 * i + 1] << 8);
            if (row >= (uint64_t)n) { cand->corrupt = 1; return -1; }
            out[i] = (uint32_t)row;
        }
        count += rows;
    }
    return count;
}

/* Sorts hits[first:] by row and keeps each row once (a code close to the query is usually
 * found through several chunks). Returns 0, or -1 on allocation failure. */
static int unique_rows(hits_t *hits, Py_ssize_t first) {
    Py_ssize_t found = hits->len - first;
    if (found <= 1) return 0;
    uint64_t *pairs = malloc(found * sizeof(uint64_t));
    if (!pairs) return -1;
    for (Py_ssize_t i = 0; i < found; i++)
        pairs[i] = ((uint64_t)hits->rows[first + i] << 32) | (uint32_t)hits->dist[first + i];
    qsort(pairs, found, sizeof(uint64_t), cmp_u64);
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < found; i++) {
        uint32_t row = (uint32_t)(pairs[i] >> 32);
        if (kept && hits->rows[first + kept - 1] == row) continue;
        hits->rows[first + kept] = row;
        hits->dist[first + kept] = (int32_t)(uint32_t)pairs[i];
        kept++;
    }
    hits->len = first + kept;
    free(pairs);
    return 0;
}

/* One query: returns 0, or -1 on allocation failure. Hits are unique rows, ascending. */
POPCOUNT_CLONES
static int search_one(const uint8_t *codes, Py_ssize_t n, int nbytes, const uint32_t *dirs,
                      const uint8_t *blob, Py_ssize_t blob_len, const uint8_t *q, int radius,
                      const uint8_t *probes, cand_t *cand, hits_t *hits, Py_ssize_t *examined) {
    Py_ssize_t count = gather(n, nbytes, dirs, blob, blob_len, q, probes, cand);
    if (count < 0) return -1;
    *examined += count;
    Py_ssize_t first = hits->len;
    const uint32_t *buf = cand->buf;
    for (Py_ssize_t p = 0; p < count; p++) {
        if (p + PREFETCH < count) __builtin_prefetch(codes + (size_t)buf[p + PREFETCH] * nbytes);
        uint32_t row = buf[p];
        int d = distance(q, codes + (size_t)row * nbytes, nbytes);
        if (d <= radius && hits_push(hits, row, d) < 0) return -1;
    }
    return unique_rows(hits, first);
}

/* ---- batched search: candidates checked block by block ----------------------------------
 *
 * One query's candidates are a few thousand rows spread over the whole table, so checking them
 * reads codes at random: at 1M PDQ codes (32 MB) about 15 ns a candidate, most of a search.
 * A batch's candidates are many per row (1000 queries: ~6 per row at 1M), so they are first
 * sorted into blocks of rows whose codes fit in the L2 cache (BLOCK_BYTES), each candidate as
 * one 32-bit word (its row within the block, and the query), then checked block after block:
 * every block's codes are read from memory about once. The hits are the same as one query at a
 * time (per query: unique rows, ascending) and so is ``examined``. */
#define BATCH_MIN 16                    /* fewer queries: one at a time */
#define BLOCK_BYTES (256 * 1024)
#define PASS_CANDIDATES (1024 * 1024) /* per pass over the blocks, at most about this many */

typedef struct {
    uint32_t q, row;
    int32_t d;
} triple_t;

/* The candidate words of a pass, block after block, kept by each thread from one batch to the
 * next: fresh pages would cost a page fault every 4 KiB each time (a few ms a batch). */
static _Thread_local uint32_t *arena = NULL;
static _Thread_local Py_ssize_t arena_cap = 0;

/* log2 of the rows per block: the largest power of two whose codes fit BLOCK_BYTES (at least
 * 2**8, at most 2**20, so a word keeps 12 or more bits for the query). */
static int block_shift(int nbytes) {
    int s = 8;
    while (s < 20 && ((Py_ssize_t)nbytes << (s + 1)) <= BLOCK_BYTES) s++;
    return s;
}

/* Probed values per query: 1 + C(16,1) + ... + C(16,r) per chunk probed to radius r. */
static Py_ssize_t probes_per_query(const uint8_t *probes, int m) {
    static const int per_radius[MAX_PROBE + 1] = {1, 17, 137, 697};
    Py_ssize_t total = 0;
    for (int c = 0; c < m; c++)
        if (probes[c] != 0xff) total += per_radius[probes[c]];
    return total;
}

/* A block's words past its share of the arena (rows spread unevenly): a growable overflow. */
typedef struct {
    uint32_t *w;
    Py_ssize_t len, cap;
} spill_t;

static int spill_push(spill_t *s, uint32_t w) {
    if (s->len == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 256;
        uint32_t *p = realloc(s->w, cap * sizeof(uint32_t));
        if (!p) return -1;
        s->w = p;
        s->cap = cap;
    }
    s->w[s->len++] = w;
    return 0;
}

static int triple_push(triple_t **t, Py_ssize_t *len, Py_ssize_t *cap, uint32_t q, uint32_t row,
                       int32_t d) {
    if (*len == *cap) {
        Py_ssize_t c = *cap ? *cap * 2 : 1024;
        triple_t *p = realloc(*t, c * sizeof(triple_t));
        if (!p) return -1;
        *t = p;
        *cap = c;
    }
    (*t)[*len].q = q;
    (*t)[*len].row = row;
    (*t)[*len].d = d;
    (*len)++;
    return 0;
}

/* Checks the words w[0..len) of block b (each: query - q0 above ``shift`` bits, row within the
 * block below), appending the hits. Returns 0, or -1 on allocation failure. */
POPCOUNT_CLONES
static int check_block(const uint8_t *codes, int nbytes, int shift, Py_ssize_t b,
                       const uint32_t *w, Py_ssize_t len, const uint8_t *qs, Py_ssize_t q0,
                       int radius, triple_t **found, Py_ssize_t *nfound, Py_ssize_t *cap) {
    const uint32_t mask = (1u << shift) - 1;
    const uint8_t *base = codes + ((size_t)b << shift) * nbytes;
    for (Py_ssize_t p = 0; p < len; p++) {
        if (p + PREFETCH < len) __builtin_prefetch(base + (size_t)(w[p + PREFETCH] & mask) * nbytes);
        uint32_t local = w[p] & mask, qi = (uint32_t)q0 + (w[p] >> shift);
        int d = distance(qs + (size_t)qi * nbytes, base + (size_t)local * nbytes, nbytes);
        if (d <= radius && triple_push(found, nfound, cap, qi, ((uint32_t)b << shift) | local, d) < 0)
            return -1;
    }
    return 0;
}

/* The hits of every query as the per-query search leaves them: lims[0..nq], and per query its
 * unique rows ascending. Returns 0, or -1 on allocation failure. */
static int hits_by_query(const triple_t *found, Py_ssize_t nfound, Py_ssize_t nq, hits_t *hits,
                         int64_t *lims) {
    for (Py_ssize_t i = 0; i <= nq; i++) lims[i] = 0;
    hits->len = 0;
    if (!nfound) return 0;
    for (Py_ssize_t t = 0; t < nfound; t++) lims[found[t].q + 1]++;
    for (Py_ssize_t i = 0; i < nq; i++) lims[i + 1] += lims[i];
    hits->rows = malloc(nfound * sizeof(uint32_t));
    hits->dist = malloc(nfound * sizeof(int32_t));
    int64_t *next = malloc(nq * sizeof(int64_t));
    if (!hits->rows || !hits->dist || !next) {
        free(next);
        return -1;
    }
    hits->cap = nfound;
    memcpy(next, lims, nq * sizeof(int64_t));
    for (Py_ssize_t t = 0; t < nfound; t++) {
        int64_t at = next[found[t].q]++;
        hits->rows[at] = found[t].row;
        hits->dist[at] = found[t].d;
    }
    free(next);
    /* Each query's hits made unique, moved down to where the previous query's end. */
    Py_ssize_t out = 0;
    for (Py_ssize_t i = 0; i < nq; i++) {
        Py_ssize_t lo = lims[i], hi = lims[i + 1];
        memmove(hits->rows + out, hits->rows + lo, (hi - lo) * sizeof(uint32_t));
        memmove(hits->dist + out, hits->dist + lo, (hi - lo) * sizeof(int32_t));
        hits->len = out + (hi - lo);
        if (unique_rows(hits, out) < 0) return -1;
        lims[i] = out;
        out = hits->len;
    }
    lims[nq] = out;
    return 0;
}

/* Every query of the batch; fills lims[0..nq] and hits. Returns 0, or -1 on allocation
 * failure. */
static int search_blocked(const uint8_t *codes, Py_ssize_t n, int nbytes, const uint32_t *dirs,
                          const uint8_t *blob, Py_ssize_t blob_len, const uint8_t *qs,
                          Py_ssize_t nq, int radius, const uint8_t *probes, cand_t *cand,
                          hits_t *hits, int64_t *lims, Py_ssize_t *examined) {
    const int shift = block_shift(nbytes);
    const uint32_t mask = (1u << shift) - 1;
    const Py_ssize_t nblocks = (n + mask) >> shift;
    const double per_query = (double)probes_per_query(probes, nbytes / 2) * (double)n / CHUNK_VALUES;
    Py_ssize_t step = (Py_ssize_t)((double)PASS_CANDIDATES / (per_query + 1.0));
    if (step < 1) step = 1;
    if (step > ((Py_ssize_t)1 << (32 - shift))) step = (Py_ssize_t)1 << (32 - shift);
    if (step > nq) step = nq;
    /* Each block's share of the arena: its expected words (rows spread about evenly) and room
     * to spare; words past it spill. */
    Py_ssize_t share = (Py_ssize_t)(1.2 * per_query * (double)step / (double)nblocks) + 64;
    int failed = 0;
    triple_t *found = NULL;
    Py_ssize_t nfound = 0, found_cap = 0;
    uint32_t **cur = malloc((nblocks + 1) * sizeof(uint32_t *));
    spill_t *spill = calloc(nblocks + 1, sizeof(spill_t));
    if (!cur || !spill) failed = 1;
    if (!failed && arena_cap < share * nblocks) {
        free(arena);
        arena = malloc(share * nblocks * sizeof(uint32_t));
        arena_cap = arena ? share * nblocks : 0;
        if (!arena) failed = 1;
    }
    for (Py_ssize_t q0 = 0; q0 < nq && !failed; q0 += step) {
        Py_ssize_t q1 = q0 + step < nq ? q0 + step : nq;
        for (Py_ssize_t b = 0; b < nblocks; b++) {
            cur[b] = arena + b * share;
            spill[b].len = 0;
        }
        for (Py_ssize_t i = q0; i < q1 && !failed; i++) {
            Py_ssize_t count = gather(n, nbytes, dirs, blob, blob_len, qs + i * nbytes, probes,
                                      cand);
            if (count < 0) { failed = 1; break; }
            *examined += count;
            const uint32_t tag = (uint32_t)(i - q0) << shift;
            const uint32_t *rows = cand->buf;
            for (Py_ssize_t p = 0; p < count; p++) {
                Py_ssize_t b = rows[p] >> shift;
                uint32_t w = tag | (rows[p] & mask);
                if (__builtin_expect(cur[b] == arena + (b + 1) * share, 0)) {
                    if (spill_push(&spill[b], w) < 0) { failed = 1; break; }
                } else {
                    *cur[b]++ = w;
                }
            }
        }
        for (Py_ssize_t b = 0; b < nblocks && !failed; b++) {
            const uint32_t *w = arena + b * share;
            failed = check_block(codes, nbytes, shift, b, w, cur[b] - w, qs, q0, radius, &found,
                                 &nfound, &found_cap) < 0
                     || check_block(codes, nbytes, shift, b, spill[b].w, spill[b].len, qs, q0,
                                    radius, &found, &nfound, &found_cap) < 0;
        }
    }
    if (spill)
        for (Py_ssize_t b = 0; b < nblocks; b++) free(spill[b].w);
    free(spill);
    free(cur);
    if (!failed) failed = hits_by_query(found, nfound, nq, hits, lims) < 0;
    free(found);
    return failed ? -1 : 0;
}

/* search(codes, nbytes, dirs, blob, queries, radius, probes)
 *   -> (lims: int64[q+1] bytes, rows: uint32 bytes, distances: int32 bytes, examined: int)
 * probes[c] is chunk c's probe radius (0..3), or 255 to skip the chunk. */
static PyObject *mih_search(PyObject *self, PyObject *args) {
    PyObject *codes_o, *dirs_o, *blob_o, *q_o;
    int nbytes, radius;
    const char *probes;
    Py_ssize_t nprobes;
    if (!PyArg_ParseTuple(args, "OiOOOiy#", &codes_o, &nbytes, &dirs_o, &blob_o, &q_o, &radius,
                          &probes, &nprobes))
        return NULL;
    if (nbytes <= 0 || nbytes % 8 || nprobes != nbytes / 2) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be a multiple of 8, one probe per chunk");
        return NULL;
    }
    for (Py_ssize_t c = 0; c < nprobes; c++) {
        unsigned char p = (unsigned char)probes[c];
        if (p > MAX_PROBE && p != 0xff) {
            PyErr_SetString(PyExc_ValueError, "probe radius must be 0..3 or 255");
            return NULL;
        }
    }
    Py_buffer codes, dirs, blob, qs;
    if (get_buffer(codes_o, &codes, 0, "codes") < 0) return NULL;
    if (get_buffer(dirs_o, &dirs, 0, "dirs") < 0) { PyBuffer_Release(&codes); return NULL; }
    if (get_buffer(blob_o, &blob, 0, "blob") < 0) {
        PyBuffer_Release(&codes); PyBuffer_Release(&dirs); return NULL;
    }
    if (get_buffer(q_o, &qs, 0, "queries") < 0) {
        PyBuffer_Release(&codes); PyBuffer_Release(&dirs); PyBuffer_Release(&blob); return NULL;
    }
    int m = nbytes / 2;
    Py_ssize_t n = codes.len / nbytes, nq = qs.len / nbytes, blob_len = blob_bytes(n);
    PyObject *result = NULL;
    if (codes.len % nbytes || qs.len % nbytes || dirs.len != (Py_ssize_t)m * (CHUNK_VALUES + 1) * 8
        || blob.len != (Py_ssize_t)m * blob_len) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match");
        goto done;
    }
    int64_t *lims = malloc((nq + 1) * sizeof(int64_t));
    hits_t hits = {NULL, NULL, 0, 0};
    cand_t cand = {NULL, 0, malloc((size_t)m * PROBES_PER_CHUNK * sizeof(uint32_t)),
                   malloc((size_t)m * PROBES_PER_CHUNK * sizeof(uint32_t)), 0};
    Py_ssize_t examined = 0;
    int failed = lims == NULL || cand.probe_c == NULL || cand.probe_v == NULL;
    if (!failed) {
        Py_BEGIN_ALLOW_THREADS
        lims[0] = 0;
        if (nq >= BATCH_MIN)
            failed = search_blocked((const uint8_t *)codes.buf, n, nbytes,
                                    (const uint32_t *)dirs.buf, (const uint8_t *)blob.buf,
                                    blob_len, (const uint8_t *)qs.buf, nq, radius,
                                    (const uint8_t *)probes, &cand, &hits, lims, &examined) < 0;
        for (Py_ssize_t i = 0; i < nq && nq < BATCH_MIN && !failed; i++) {
            failed = search_one((const uint8_t *)codes.buf, n, nbytes, (const uint32_t *)dirs.buf,
                                (const uint8_t *)blob.buf, blob_len,
                                (const uint8_t *)qs.buf + i * nbytes,
                                radius, (const uint8_t *)probes, &cand, &hits, &examined) < 0;
            lims[i + 1] = hits.len;
        }
        Py_END_ALLOW_THREADS
    }
    if (failed && cand.corrupt) {
        PyErr_SetString(PyExc_ValueError, "the tables do not decode to rows of these codes");
    } else if (failed) {
        PyErr_NoMemory();
    } else {
        result = Py_BuildValue("(y#y#y#n)", (const char *)lims, (Py_ssize_t)((nq + 1) * 8),
                               hits.rows ? (const char *)hits.rows : "", hits.len * 4,
                               hits.dist ? (const char *)hits.dist : "", hits.len * 4, examined);
    }
    free(lims); free(hits.rows); free(hits.dist); free(cand.buf);
    free(cand.probe_c); free(cand.probe_v);
done:
    PyBuffer_Release(&codes); PyBuffer_Release(&dirs); PyBuffer_Release(&blob);
    PyBuffer_Release(&qs);
    return result;
}

static PyMethodDef methods[] = {
    {"build", mih_build, METH_VARARGS, "build(codes, nbytes, chunk, dirs, blob)"},
    {"blob_bytes", mih_blob_bytes, METH_VARARGS, "blob_bytes(n): bytes of one chunk's blob"},
    {"search", mih_search, METH_VARARGS,
     "search(codes, nbytes, dirs, blob, queries, radius, probes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mih", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mih(void) { return PyModule_Create(&module); }
