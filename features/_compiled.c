/* The hot loops of feature extraction in C, each the compiled twin of a Python reference that
 * stays the specification and the fallback when this module is not built:
 *
 *   hashed_row      features.extractor._hashed_python   the hashed n-gram block of a row
 *   char_classes    features.signals._class_counts_python
 *   quantities      features.signals._quantities_python
 *   keyword_counts  features.signals._keyword_counts_python
 *
 * hashed_row: the hashed n-gram block of a feature row, in one call. Everything here must give exactly the reference's row: the same columns
 * in the same order (last occurrence in the token stream) with the same float64 values, so that
 * FEATURE_VERSION "2" and every trained artifact stay valid.
 *
 * Only the CPython C API is used, so building it adds no dependency. The caller keeps the two
 * steps whose rounding depends on numpy: it passes `np.log` of small integers as a table (numpy's
 * SIMD log differs from libm's in the last bit for some integers), and computes the L2 norm
 * itself (a BLAS dot product sums in a CPU-specific order).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HASH_FEATURES (1 << 24)
#define MAX_NGRAM 8
#define LOW_31 0x7FFFFFFFu
#define MIX_A 0x9E3779B97F4A7C15ull
#define MIX_B 0xC2B2AE3D27D4EB4Full
#define TOKENS_MAX (PY_SSIZE_T_MAX / 16)

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* Per-row work buffers kept between rows, instead of each row allocating its own. A buffer is
 * owned while used (the kept pointer is cleared), so a nested row, from a finaliser a
 * collection runs, allocates its own. */
typedef struct {
    void *ptr;
    size_t size;
} Scratch;

#define SCRATCH_MAX ((size_t)1 << 21) /* larger buffers (huge prompts) are not kept */

/* A buffer of at least `size` bytes; its actual size in *got, for scratch_give. */
static void *
scratch_take(Scratch *s, size_t size, size_t *got)
{
    size = size ? size : 1;
    if (s->ptr != NULL && s->size >= size) {
        void *p = s->ptr;
        *got = s->size;
        s->ptr = NULL;
        return p;
    }
    *got = size;
    return PyMem_Malloc(size);
}

/* Back to the keeper (the larger of it and what it holds), or freed. */
static void
scratch_give(Scratch *s, void *p, size_t size)
{
    if (p == NULL) {
        return;
    }
    if (size > SCRATCH_MAX || (s->ptr != NULL && s->size >= size)) {
        PyMem_Free(p);
        return;
    }
    PyMem_Free(s->ptr);
    s->ptr = p;
    s->size = size;
}

/* Slicing-by-8 tables: crc_table[j][b] is the CRC register after byte b and j zero bytes, so
 * up to 8 bytes cost independent lookups instead of a chain of dependent ones (n-grams are a
 * few bytes each, and the chain's latency is most of their cost). */
static uint32_t crc_table[8][256];
/* Asks for a table's cache lines all at once. Between two requests the tables are evicted
 * (other code runs); each CRC step waits on its table lookups, so cold lines would otherwise
 * arrive one miss at a time. */
static inline void
prefetch_block(const void *start, size_t size)
{
#if defined(__GNUC__) || defined(__clang__)
    for (size_t k = 0; k < size; k += 64) {
        __builtin_prefetch((const char *)start + k);
    }
#else
    (void)start;
    (void)size;
#endif
}

/* zlib.crc32(b"w:") and zlib.crc32(b"c:"): crc32(data, crc32(prefix)) == crc32(prefix + data). */
static uint32_t word_seed, char_seed;

static void
crc_init(void)
{
    for (uint32_t byte = 0; byte < 256; byte++) {
        uint32_t c = byte;
        for (int bit = 0; bit < 8; bit++) {
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
        crc_table[0][byte] = c;
    }
    for (int j = 1; j < 8; j++) {
        for (int byte = 0; byte < 256; byte++) {
            uint32_t c = crc_table[j - 1][byte];
            crc_table[j][byte] = (c >> 8) ^ crc_table[0][c & 0xFF];
        }
    }
}

static inline uint32_t
load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* zlib.crc32(data[:size], seed). Inlined: most calls extend an n-gram by one character, and the
 * call cost as much as the few table lookups that does. */
static ALWAYS_INLINE uint32_t
crc32_update(uint32_t seed, const unsigned char *p, Py_ssize_t size)
{
    const uint32_t(*t)[256] = crc_table;
    uint32_t c = ~seed;
    for (; size >= 8; p += 8, size -= 8) {
        uint32_t lo = c ^ load_le32(p), hi = load_le32(p + 4);
        c = t[7][lo & 0xFF] ^ t[6][lo >> 8 & 0xFF] ^ t[5][lo >> 16 & 0xFF] ^ t[4][lo >> 24]
            ^ t[3][hi & 0xFF] ^ t[2][hi >> 8 & 0xFF] ^ t[1][hi >> 16 & 0xFF] ^ t[0][hi >> 24];
    }
    if (size >= 4) {
        c ^= load_le32(p);
        c = t[3][c & 0xFF] ^ t[2][c >> 8 & 0xFF] ^ t[1][c >> 16 & 0xFF] ^ t[0][c >> 24];
        p += 4;
        size -= 4;
    }
    switch (size) {
    case 3:
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        c = t[2][c & 0xFF] ^ t[1][c >> 8 & 0xFF] ^ t[0][c >> 16 & 0xFF] ^ c >> 24;
        break;
    case 2:
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8;
        c = t[1][c & 0xFF] ^ t[0][c >> 8 & 0xFF] ^ c >> 16;
        break;
    case 1:
        c = t[0][(c ^ p[0]) & 0xFF] ^ c >> 8;
        break;
    default:
        break;
    }
    return ~c;
}

/* How a 32-bit hash becomes a column: (h mod 2**31) mod n, a mask when n is a power of two
 * (the default; a division per token would be a large share of the work). */
typedef struct {
    uint32_t n;
    int pow2;
} Columns;

static Columns
columns_of(int64_t n)
{
    Columns c = {(uint32_t)n, (n & (n - 1)) == 0};
    return c;
}

/* A 32-bit hash's column, as ~column when its sign is -1 (extractor._code). */
static inline int64_t
code_of(uint32_t h, Columns c)
{
    uint32_t low = h & LOW_31;
    int64_t col = c.pow2 ? (int64_t)(low & (c.n - 1)) : (int64_t)(low % c.n);
    return h > LOW_31 ? ~col : col;
}

/* Character n-grams of a padded word of `p` code points (scikit-learn's char_wb): every window
 * of each size k < p, by size then position, then the whole padded word once if some size in
 * [lo, hi] reaches p. */
static Py_ssize_t
gram_count(Py_ssize_t p, int lo, int hi)
{
    Py_ssize_t count = 0;
    for (int k = lo; k <= hi && k < p; k++) {
        count += p - k + 1;
    }
    return count + ((p > lo ? p : lo) <= hi);
}

/* Scratch for one padded word: its UTF-8 bytes and each code point's byte offset. */
typedef struct {
    unsigned char *bytes;
    Py_ssize_t *offsets; /* offsets[i] = byte where code point i starts; offsets[p] = size */
} Padded;

/* One word's code points, wherever they are: a str of its own (hashed_row's list) or a run of
 * the lower-cased window (feature_row, which makes no str per word). */
typedef struct {
    const void *data; /* the first code point */
    Py_ssize_t length;
    int kind;
    int ascii; /* every code point below 128 (and kind 1): its bytes are its UTF-8 */
} WordView;

/* Writes " word " as UTF-8 with lone surrogates as their 3-byte form (Python's
 * "surrogatepass"), which is simply the generic encoding of the code point. */
static void
pad_word(const WordView *word, Padded *out)
{
    Py_ssize_t length = word->length;
    int kind = word->kind;
    const void *data = word->data;
    unsigned char *b = out->bytes;
    Py_ssize_t pos = 0;
    out->offsets[0] = 0;
    b[pos++] = ' ';
    if (word->ascii) { /* most words: the bytes are the code points */
        memcpy(b + 1, data, (size_t)length);
        for (Py_ssize_t i = 0; i <= length + 1; i++) {
            out->offsets[i + 1] = i + 1;
        }
        b[length + 1] = ' ';
        return;
    }
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        out->offsets[i + 1] = pos;
        if (c < 0x80) {
            b[pos++] = (unsigned char)c;
        }
        else if (c < 0x800) {
            b[pos++] = (unsigned char)(0xC0 | (c >> 6));
            b[pos++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000) {
            b[pos++] = (unsigned char)(0xE0 | (c >> 12));
            b[pos++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            b[pos++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else {
            b[pos++] = (unsigned char)(0xF0 | (c >> 18));
            b[pos++] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            b[pos++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            b[pos++] = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    out->offsets[length + 1] = pos;
    b[pos++] = ' ';
    out->offsets[length + 2] = pos;
}

/* Codes of one word's char n-grams, in the reference's order, into `out`; returns how many. */
static Py_ssize_t
word_grams(const Padded *w, Py_ssize_t p, int lo, int hi, Columns n, int64_t *out)
{
    const Py_ssize_t *off = w->offsets;
    Py_ssize_t written = 0;
    int top = hi < p - 1 ? hi : (int)(p - 1); /* largest size with more than one window */
    if (lo <= top) {
        /* Grow each window from size lo to top, continuing its CRC: crc32 streams. */
        Py_ssize_t block[MAX_NGRAM + 1];
        Py_ssize_t start = 0;
        for (int k = lo; k <= top; k++) {
            block[k] = start;
            start += p - k + 1;
        }
        for (Py_ssize_t i = 0; i + lo <= p; i++) {
            uint32_t crc = crc32_update(char_seed, w->bytes + off[i], off[i + lo - 1] - off[i]);
            for (int k = lo; k <= top && i + k <= p; k++) {
                Py_ssize_t from = off[i + k - 1];
                crc = crc32_update(crc, w->bytes + from, off[i + k] - from);
                out[block[k] + i] = code_of(crc, n);
            }
        }
        written = start;
    }
    if ((p > lo ? p : lo) <= hi) {
        out[written++] = code_of(crc32_update(char_seed, w->bytes, off[p]), n);
    }
    return written;
}

/* Open-addressing map from column to its slot in the unique-column arrays. An entry packs
 * (column << 32) | (slot + 1), 0 when empty: columns are below 2**24 and so are slots, since
 * there are at most n of them. One 8-byte load per probe. */
typedef struct {
    uint64_t *entries;
    size_t entries_size; /* its allocation's bytes: a kept table may be longer than mask + 1 */
    size_t mask;
    int shift; /* 64 - log2(capacity): a Fibonacci hash keeps the product's top bits */
    int64_t *cols;
    int64_t *sums;
    size_t cols_size, sums_size; /* their allocations' bytes */
    Py_ssize_t size;
} ColumnMap;

static Scratch entries_scratch, cols_scratch, sums_scratch;

static int
map_init(ColumnMap *m, Py_ssize_t distinct_max)
{
    size_t capacity = 16;
    int shift = 60;
    while (capacity < (size_t)distinct_max * 2) {
        capacity <<= 1;
        shift--;
    }
    m->shift = shift;
    m->mask = capacity - 1;
    m->size = 0;
    /* A kept table longer than this one is used in part: the mask keeps probes inside. Clearing
     * the part is a memset (clearing only the slots a row filled, found again by probing, cost
     * as much as filling them). */
    m->entries = scratch_take(&entries_scratch, capacity * sizeof(uint64_t), &m->entries_size);
    if (m->entries != NULL) {
        memset(m->entries, 0, capacity * sizeof(uint64_t));
    }
    size_t bytes = (size_t)distinct_max * sizeof(int64_t);
    m->cols = scratch_take(&cols_scratch, bytes, &m->cols_size);
    m->sums = scratch_take(&sums_scratch, bytes, &m->sums_size);
    if (m->entries == NULL || m->cols == NULL || m->sums == NULL) {
        return -1;
    }
    return 0;
}

static void
map_free(ColumnMap *m)
{
    scratch_give(&entries_scratch, m->entries, m->entries_size);
    scratch_give(&cols_scratch, m->cols, m->cols_size);
    scratch_give(&sums_scratch, m->sums, m->sums_size);
}

static void
map_add(ColumnMap *m, int64_t col, int sign)
{
    size_t i = (size_t)((uint64_t)col * 0x9E3779B97F4A7C15ull >> m->shift);
    for (;;) {
        uint64_t entry = m->entries[i];
        if (entry == 0) {
            m->entries[i] = (uint64_t)col << 32 | (uint64_t)(m->size + 1);
            m->cols[m->size] = col;
            m->sums[m->size] = sign;
            m->size++;
            return;
        }
        if ((int64_t)(entry >> 32) == col) {
            m->sums[(entry & 0xFFFFFFFFu) - 1] += sign;
            return;
        }
        i = (i + 1) & m->mask;
    }
}

typedef struct {
    const WordView *words;
    Py_ssize_t n_words;
    int64_t n;
    int kmax, lo, hi;
    int has_task;
    int64_t task_code;
    int64_t n_dense;
    const double *log_table; /* log_table[k] == np.log(k) for 1 <= k < log_size */
    Py_ssize_t log_size;
    const double *colw; /* a weight per hashed column (n of them), or NULL for none */
} Spec;

static Scratch codes_scratch;

/* Every hashed token occurrence as a code, in the reference's order: per word its unigram and
 * char n-grams, then word 2- to kmax-grams by size then position, then the task type. The
 * array is codes_scratch's to give back, *size_out bytes. */
static int64_t *
token_codes(const Spec *s, Py_ssize_t *total_out, size_t *size_out)
{
    Py_ssize_t n_words = s->n_words;
    const WordView *items = s->words;
    Py_ssize_t total = s->has_task, longest = 0;
    for (Py_ssize_t j = 0; j < n_words; j++) {
        Py_ssize_t length = items[j].length;
        if (length > longest) {
            longest = length;
        }
        /* A word of L code points has at most 1 + 8 * (L + 3) tokens: the guard keeps the
         * total, and 8 bytes per token, far from overflow even on 32-bit builds. */
        if (length > TOKENS_MAX / 16 || total > TOKENS_MAX - 16 * (length + 3)) {
            PyErr_NoMemory();
            return NULL;
        }
        total += 1 + gram_count(length + 2, s->lo, s->hi);
    }
    /* Each word starts at most one n-gram per size, so this adds at most 7 * n_words. */
    for (int k = 2; k <= s->kmax && k <= n_words; k++) {
        total += n_words - k + 1;
    }
    int64_t *codes = scratch_take(&codes_scratch, (size_t)total * sizeof(int64_t), size_out);
    uint32_t *hashes = PyMem_New(uint32_t, n_words > 0 ? n_words : 1);
    Padded w = {PyMem_Malloc(4 * longest + 2), PyMem_New(Py_ssize_t, longest + 3)};
    if (codes == NULL || hashes == NULL || w.bytes == NULL || w.offsets == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Columns columns = columns_of(s->n);
    Py_ssize_t head = 0;
    for (Py_ssize_t j = 0; j < n_words; j++) {
        Py_ssize_t p = items[j].length + 2;
        pad_word(&items[j], &w);
        hashes[j] = crc32_update(word_seed, w.bytes + 1, w.offsets[p - 1] - 1);
        codes[head++] = code_of(hashes[j], columns);
        head += word_grams(&w, p, s->lo, s->hi, columns, codes + head);
    }
    /* Word n-grams: g2(i) = (h_i * A ^ h_{i+1} * B) >> 32, g_k(i) = (g_{k-1}(i) * A ^
     * h_{i+k-1} * B) >> 32, all mod 2**64; `hashes` is overwritten in place as g grows. */
    if (n_words >= 2 && s->kmax >= 2) {
        /* `grams[i]` holds g_{k-1}(i); the words' own hashes stay in `hashes`. */
        uint32_t *grams = PyMem_New(uint32_t, n_words);
        if (grams == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(grams, hashes, n_words * sizeof(uint32_t));
        for (int k = 2; k <= s->kmax && k <= n_words; k++) {
            for (Py_ssize_t i = 0; i + k <= n_words; i++) {
                uint64_t mixed = (uint64_t)grams[i] * MIX_A ^ (uint64_t)hashes[i + k - 1] * MIX_B;
                grams[i] = (uint32_t)(mixed >> 32);
                codes[head++] = code_of(grams[i], columns);
            }
        }
        PyMem_Free(grams);
    }
    if (s->has_task) {
        codes[head++] = s->task_code;
    }
    PyMem_Free(hashes);
    PyMem_Free(w.bytes);
    PyMem_Free(w.offsets);
    *total_out = head;
    return codes;
fail:
    scratch_give(&codes_scratch, codes, *size_out);
    PyMem_Free(hashes);
    PyMem_Free(w.bytes);
    PyMem_Free(w.offsets);
    return NULL;
}

/* Unique columns with their signed counts, ordered by each column's last occurrence: the
 * reference keeps, per column, the last position that wrote it. Scanning backwards, a column's
 * first sighting is its last occurrence, so the map's insertion order is that order reversed. */
static int
merge_columns(const int64_t *codes, Py_ssize_t total, int64_t n, ColumnMap *m)
{
    if (map_init(m, total < n ? total : (Py_ssize_t)n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t t = total - 1; t >= 0; t--) {
        int64_t negative = codes[t] >> 63; /* 0 or -1: the sign, branch-free */
        map_add(m, codes[t] ^ negative, (int)(negative | 1));
    }
    return 0;
}

/* The correctly rounded sum of x[i] * x[i] (each square rounded first), which is what
 * math.fsum((x * x).tolist()) returns: exact partials, as CPython's fsum keeps them. A correctly
 * rounded sum has one value whatever the order or the machine, unlike a BLAS dot product, so
 * the Python reference and this agree bit for bit. The squares are finite: the weights are
 * sublinear tf values, at most 1 + ln(K). */
#define MAX_PARTIALS 64 /* finite doubles need at most ~40 non-overlapping partials */
static double
sum_of_squares(const double *x, Py_ssize_t n)
{
#if defined(__SIZEOF_INT128__)
    /* Squares in [1, 2^11) are whole multiples of 2^-52 below 2^63 of them: summed as integers
     * they are exact, and the one rounding to double is the correctly rounded sum. Sublinear tf
     * weights are at least 1, so this is the only path they take. */
    unsigned __int128 exact = 0;
    Py_ssize_t k = 0;
    for (; k < n; k++) {
        double square = x[k] * x[k];
        if (!(square >= 1.0 && square < 0x1p11)) {
            break;
        }
        exact += (uint64_t)(square * 0x1p52);
    }
    if (k == n) {
        return ldexp((double)exact, -52);
    }
#endif
    double p[MAX_PARTIALS];
    int np = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        volatile double square = x[k] * x[k]; /* rounded on its own: never fused into an add */
        double v = square;
        int i = 0;
        for (int j = 0; j < np; j++) {
            double y = p[j];
            if (fabs(v) < fabs(y)) {
                double t = v;
                v = y;
                y = t;
            }
            double hi = v + y;
            double lo = y - (hi - v);
            if (lo != 0.0) {
                p[i++] = lo;
            }
            v = hi;
        }
        np = i;
        if (v != 0.0 && np < MAX_PARTIALS) {
            p[np++] = v;
        }
    }
    /* Sum the partials from the top, then correct a half-way case (CPython's math_fsum). */
    double hi = 0.0, lo = 0.0;
    if (np > 0) {
        hi = p[--np];
        while (np > 0) {
            double v = hi, y = p[--np];
            hi = v + y;
            lo = y - (hi - v);
            if (lo != 0.0) {
                break;
            }
        }
        if (np > 0 && ((lo < 0.0 && p[np - 1] < 0.0) || (lo > 0.0 && p[np - 1] > 0.0))) {
            double y = lo * 2.0;
            double v = hi + y;
            if (y == v - hi) {
                hi = v;
            }
        }
    }
    return hi;
}

/* The row as (cols, values, raw): int64 and float64 bytearrays. Values are the sublinear tf
 * sign(v) * (1 + ln|v|) of the non-zero counts, times their column's weight when the spec has
 * weights, L2-normalised, unless some |v| is past the log table: then `raw` is True and values
 * are the signed counts themselves, for the caller to finish. */
static PyObject *
build_row(const Spec *s, const ColumnMap *m)
{
    Py_ssize_t kept = 0;
    int raw = 0;
    for (Py_ssize_t u = 0; u < m->size; u++) {
        int64_t v = m->sums[u];
        kept += v != 0;
        raw |= (v < 0 ? -v : v) >= s->log_size;
    }
    PyObject *cols = PyByteArray_FromStringAndSize(NULL, kept * (Py_ssize_t)sizeof(int64_t));
    PyObject *values = PyByteArray_FromStringAndSize(NULL, kept * (Py_ssize_t)sizeof(double));
    if (cols == NULL || values == NULL) {
        Py_XDECREF(cols);
        Py_XDECREF(values);
        return NULL;
    }
    int64_t *c = (int64_t *)PyByteArray_AS_STRING(cols);
    double *x = (double *)PyByteArray_AS_STRING(values);
    Py_ssize_t out = 0;
    for (Py_ssize_t u = m->size - 1; u >= 0; u--) {
        int64_t v = m->sums[u];
        if (v == 0) {
            continue; /* collisions that cancel are dropped */
        }
        c[out] = m->cols[u] + s->n_dense;
        if (raw) {
            x[out] = (double)v;
        }
        else {
            x[out] = copysign(1.0 + s->log_table[v < 0 ? -v : v], (double)v);
            if (s->colw != NULL) {
                x[out] *= s->colw[m->cols[u]];
            }
        }
        out++;
    }
    if (!raw && kept) {
        /* features.extractor._normalise: weights *= 1.0 / sqrt(sum of squares) */
        double scale = 1.0 / sqrt(sum_of_squares(x, kept));
        for (Py_ssize_t k = 0; k < kept; k++) {
            x[k] *= scale;
        }
    }
    PyObject *row = PyTuple_New(3);
    if (row == NULL) {
        Py_DECREF(cols);
        Py_DECREF(values);
        return NULL;
    }
    PyTuple_SET_ITEM(row, 0, cols);
    PyTuple_SET_ITEM(row, 1, values);
    PyTuple_SET_ITEM(row, 2, Py_NewRef(raw ? Py_True : Py_False));
    return row;
}

static int
parse_int(PyObject *obj, const char *name, long long lo, long long hi, long long *out)
{
    long long value = PyLong_AsLongLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < lo || value > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in [%lld, %lld], got %lld", name, lo, hi,
                     value);
        return -1;
    }
    *out = value;
    return 0;
}

static int
parse_spec(PyObject *const *args, Spec *s)
{
    long long n, kmax, lo, hi, n_dense, task = 0;
    if (parse_int(args[1], "n", 1, MAX_HASH_FEATURES, &n) < 0
        || parse_int(args[2], "kmax", 1, MAX_NGRAM, &kmax) < 0
        || parse_int(args[3], "lo", 1, MAX_NGRAM, &lo) < 0
        || parse_int(args[4], "hi", lo, MAX_NGRAM, &hi) < 0
        || (args[5] != Py_None && parse_int(args[5], "task_code", -n, n - 1, &task) < 0)
        || parse_int(args[6], "n_dense", 0, INT32_MAX, &n_dense) < 0) {
        return -1;
    }
    if (!PyBytes_Check(args[7]) || PyBytes_GET_SIZE(args[7]) < (Py_ssize_t)sizeof(double)
        || PyBytes_GET_SIZE(args[7]) % sizeof(double) != 0) {
        PyErr_SetString(PyExc_TypeError, "log_table must be bytes of float64, log(0..K-1)");
        return -1;
    }
    s->n = n;
    s->kmax = (int)kmax;
    s->lo = (int)lo;
    s->hi = (int)hi;
    s->has_task = args[5] != Py_None;
    s->task_code = task;
    s->n_dense = n_dense;
    s->log_table = (const double *)PyBytes_AS_STRING(args[7]);
    s->log_size = PyBytes_GET_SIZE(args[7]) / (Py_ssize_t)sizeof(double);
    s->colw = NULL;
    return 0;
}

/* The optional column weights after the spec: None, or bytes of n float64s (the caller keeps
 * them alive for the call). */
static int
parse_colw(PyObject *obj, Spec *s)
{
    if (obj == Py_None) {
        return 0;
    }
    if (!PyBytes_Check(obj) || PyBytes_GET_SIZE(obj) != (Py_ssize_t)(s->n * sizeof(double))) {
        PyErr_SetString(PyExc_TypeError, "column_weights must be None or bytes of n float64s");
        return -1;
    }
    s->colw = (const double *)PyBytes_AS_STRING(obj);
    return 0;
}

PyDoc_STRVAR(hashed_row_doc,
"hashed_row(words, n, kmax, lo, hi, task_code, n_dense, log_table[, column_weights])\n"
"    -> (cols, values, raw)\n\n"
"The hashed block of a feature row, exactly as features.extractor._hashed_python computes\n"
"it: `cols` (int64, offset by n_dense) and `values` (float64, L2-normalised) as bytearrays\n"
"in the reference's order. `log_table` holds np.log(k) for k = 0..K-1 as float64 bytes; when\n"
"some count reaches K, `raw` is True and values are the signed counts, not normalised.\n"
"`column_weights`, None or n float64s as bytes, multiply the values before the norm.");

static PyObject *hashed_words(Spec *s, PyObject *words);

static PyObject *
hashed_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8 && nargs != 9) {
        PyErr_Format(PyExc_TypeError, "hashed_row takes 8 or 9 arguments, got %zd", nargs);
        return NULL;
    }
    Spec s;
    if (parse_spec(args, &s) < 0 || (nargs == 9 && parse_colw(args[8], &s) < 0)) {
        return NULL;
    }
    return hashed_words(&s, args[0]);
}

/* (cols, values, raw) of the words `s` points at. */
static PyObject *
hashed_views(Spec *s)
{
    prefetch_block(crc_table, sizeof(crc_table));
    PyObject *result = NULL;
    Py_ssize_t total = 0;
    size_t codes_size = 0;
    int64_t *codes = token_codes(s, &total, &codes_size);
    if (codes != NULL) {
        ColumnMap m = {NULL, 0, 0, 0, NULL, NULL, 0, 0, 0};
        if (merge_columns(codes, total, s->n, &m) == 0) {
            result = build_row(s, &m);
        }
        map_free(&m);
        scratch_give(&codes_scratch, codes, codes_size);
    }
    return result;
}

/* hashed_row's work once its spec is parsed: (cols, values, raw) of `words`, a list or tuple
 * of str. */
static PyObject *
hashed_words(Spec *s, PyObject *words)
{
    if (!PyList_Check(words) && !PyTuple_Check(words)) { /* a str is not its characters */
        PyErr_SetString(PyExc_TypeError, "words must be a list of str");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(words, "words must be a list of str");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n_words = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    WordView *views = PyMem_New(WordView, n_words > 0 ? n_words : 1);
    PyObject *result = NULL;
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n_words; j++) {
        if (!PyUnicode_Check(items[j])) {
            PyErr_Format(PyExc_TypeError, "words[%zd] must be a str", j);
            goto done;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(items[j]) < 0) {
            goto done;
        }
#endif
        views[j].data = PyUnicode_DATA(items[j]);
        views[j].length = PyUnicode_GET_LENGTH(items[j]);
        views[j].kind = PyUnicode_KIND(items[j]);
        views[j].ascii = PyUnicode_IS_ASCII(items[j]);
    }
    s->words = views;
    s->n_words = n_words;
    result = hashed_views(s);
    s->words = NULL;
done:
    PyMem_Free(views);
    Py_DECREF(seq);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * Dense signals: compiled twins of three counting steps of features.signals.dense_signals. The
 * Python versions (`_class_counts_python`, `_quantities_python`, `_keyword_counts_python`) stay
 * the reference and the fallback; these must give exactly their counts for any input. Code
 * points are read straight from the str, with the character tests of Python's `re` for str
 * patterns: `\d` is Py_UNICODE_ISDECIMAL, `\s` is Py_UNICODE_ISSPACE.
 */

/* Character classes, numbered as in features.signals. */
enum {
    C_ASCII_OTHER, C_DIGIT, C_UPPER, C_LOWER, C_PUNCT,
    C_LATIN_EXT, C_CJK, C_CYRILLIC, C_ARABIC, C_DEVANAGARI, C_OTHER, N_CLASSES
};

/* features.signals._SCRIPT_RANGES sorted by start: inclusive code-point ranges above ASCII;
 * a code point in none of them is C_OTHER. */
static const struct {
    Py_UCS4 lo, hi;
    unsigned char cls;
} script_ranges[] = {
    {0x00C0, 0x00D6, C_LATIN_EXT}, {0x00D8, 0x00F6, C_LATIN_EXT}, {0x00F8, 0x024F, C_LATIN_EXT},
    {0x0400, 0x052F, C_CYRILLIC},  {0x0600, 0x06FF, C_ARABIC},    {0x0750, 0x077F, C_ARABIC},
    {0x0870, 0x08FF, C_ARABIC},    {0x0900, 0x097F, C_DEVANAGARI}, {0x1100, 0x11FF, C_CJK},
    {0x1C80, 0x1C8F, C_CYRILLIC},  {0x1E00, 0x1EFF, C_LATIN_EXT}, {0x2C60, 0x2C7F, C_LATIN_EXT},
    {0x2DE0, 0x2DFF, C_CYRILLIC},  {0x2E80, 0x9FFF, C_CJK},       {0xA640, 0xA69F, C_CYRILLIC},
    {0xA720, 0xA7FF, C_LATIN_EXT}, {0xA8E0, 0xA8FF, C_DEVANAGARI}, {0xAC00, 0xD7AF, C_CJK},
    {0xF900, 0xFAFF, C_CJK},       {0xFB50, 0xFDFF, C_ARABIC},    {0xFE70, 0xFEFF, C_ARABIC},
    {0xFF00, 0xFFEF, C_CJK},       {0x20000, 0x3FFFF, C_CJK},
};
#define N_SCRIPT_RANGES ((int)(sizeof(script_ranges) / sizeof(script_ranges[0])))

/* The class of every code point below 256 (ASCII by string.digits, ascii_uppercase,
 * ascii_lowercase and punctuation; Latin-1 by the ranges), filled once by signals_init. */
static unsigned char latin1_class[256];

static int
script_class(Py_UCS4 c)
{
    int lo = 0, hi = N_SCRIPT_RANGES; /* the last range starting at or before c, if any */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (script_ranges[mid].lo <= c) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo > 0 && c <= script_ranges[lo - 1].hi ? script_ranges[lo - 1].cls : C_OTHER;
}

static void
signals_init(void)
{
    static const char punctuation[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    for (int c = 0; c < 256; c++) {
        latin1_class[c] = c < 128 ? C_ASCII_OTHER : (unsigned char)script_class((Py_UCS4)c);
    }
    for (int c = '0'; c <= '9'; c++) {
        latin1_class[c] = C_DIGIT;
    }
    for (int c = 'A'; c <= 'Z'; c++) {
        latin1_class[c] = C_UPPER;
        latin1_class[c - 'A' + 'a'] = C_LOWER;
    }
    for (const char *p = punctuation; *p; p++) {
        latin1_class[(unsigned char)*p] = C_PUNCT;
    }
}

static ALWAYS_INLINE void
class_counts_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t *counts)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        counts[c < 256 ? latin1_class[c] : script_class(c)]++;
    }
}

PyDoc_STRVAR(char_classes_doc,
"char_classes(text) -> list of 11 ints\n\n"
"Code points of `text` per character class, exactly as features.signals._class_counts_python\n"
"counts them.");

/* A list of Python ints from `n` counts (what the Python references return). */
static PyObject *
count_list(const Py_ssize_t *counts, Py_ssize_t n)
{
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyLong_FromSsize_t(counts[k]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, v);
    }
    return out;
}

static PyObject *
char_classes(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "char_classes takes a str");
        return NULL;
    }
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
    Py_ssize_t counts[N_CLASSES] = {0};
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const void *data = PyUnicode_DATA(text);
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        class_counts_kind(PyUnicode_1BYTE_KIND, data, n, counts);
        break;
    case PyUnicode_2BYTE_KIND:
        class_counts_kind(PyUnicode_2BYTE_KIND, data, n, counts);
        break;
    default:
        class_counts_kind(PyUnicode_4BYTE_KIND, data, n, counts);
        break;
    }
    return count_list(counts, N_CLASSES);
}

/* `re`'s \d and \s for str patterns (Py_UNICODE_ISDECIMAL has no ASCII shortcut of its own). */
#define IS_DIGIT(c) ((c) < 128 ? (Py_UCS4)((c) - '0') < 10 : (int)Py_UNICODE_ISDECIMAL(c))
#define IS_SPACE(c) ((int)Py_UNICODE_ISSPACE(c))

/* Distinct numbers: an open-addressing set of (start, length) spans of one str, compared by
 * their code units (within one str every code point has the same width, so equal bytes are
 * equal strings). A length of 0 marks a free slot: numbers are never empty. */
typedef struct {
    Py_ssize_t start, length;
    uint64_t hash;
} Span;

typedef struct {
    Span *slots;
    size_t mask;
    Py_ssize_t used;
    Span local[64];
} SpanSet;

static int
spanset_grow(SpanSet *set)
{
    size_t size = (set->mask + 1) * 2;
    if (size > PY_SSIZE_T_MAX / sizeof(Span)) {
        PyErr_NoMemory();
        return -1;
    }
    Span *slots = PyMem_Calloc(size, sizeof(Span));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t k = 0; k <= set->mask; k++) {
        Span *s = &set->slots[k];
        if (s->length) {
            size_t j = (size_t)s->hash & (size - 1);
            while (slots[j].length) {
                j = (j + 1) & (size - 1);
            }
            slots[j] = *s;
        }
    }
    if (set->slots != set->local) {
        PyMem_Free(set->slots);
    }
    set->slots = slots;
    set->mask = size - 1;
    return 0;
}

/* Add the span data[start : start + length] (in code units of `kind` bytes). */
static int
spanset_add(SpanSet *set, int kind, const void *data, Py_ssize_t start, Py_ssize_t length)
{
    const unsigned char *bytes = (const unsigned char *)data + start * kind;
    size_t size = (size_t)length * kind;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t k = 0; k < size; k++) {
        h = (h ^ bytes[k]) * 0x100000001b3ull;
    }
    size_t j = (size_t)h & set->mask;
    for (;; j = (j + 1) & set->mask) {
        Span *s = &set->slots[j];
        if (s->length == 0) {
            break;
        }
        if (s->hash == h && s->length == length
            && memcmp((const unsigned char *)data + s->start * kind, bytes, size) == 0) {
            return 0;
        }
    }
    set->slots[j] = (Span){start, length, h};
    set->used++;
    if ((size_t)set->used * 2 > set->mask + 1) {
        return spanset_grow(set);
    }
    return 0;
}

typedef struct {
    Py_ssize_t numbers, distinct, longest, fractions, decimals, sentences;
} Quantities;

#define AT(i) PyUnicode_READ(kind, data, (i))

/* Counts of the findall matches of features.signals' _NUMBER_RE r"\d+(?:[.,]\d+)*",
 * _FRACTION_RE r"\d\s?/\s?\d", _DECIMAL_RE r"\d\.\d" and _SENTENCE_END_RE r"[.!?](?:\s|$)".
 * Each scan is findall's: leftmost match, then go on from its end (the patterns never match
 * empty). The first three only when `numbers_too`. Returns -1 with an exception set on
 * failure. */
static ALWAYS_INLINE int
quantities_kind(int kind, const void *data, Py_ssize_t n, int numbers_too, Quantities *q,
                SpanSet *set)
{
    /* Sentence ends. \s is tried before $, and $ (end, or before a final "\n") adds only the
     * very end, as a "\n" there is \s. A match ends on whitespace or at the end, so matches
     * cannot overlap and each qualifying [.!?] is one. */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = AT(i);
        if ((c == '.' || c == '!' || c == '?') && (i + 1 == n || IS_SPACE(AT(i + 1)))) {
            q->sentences++;
        }
    }
    if (!numbers_too) {
        return 0;
    }

    /* Numbers: the greedy match from a digit. With nothing after the group, the first path the
     * backtracking engine tries succeeds: \d+ takes every digit, then each "[.,]\d+" repeat is
     * taken while a separator is followed by a digit. */
    for (Py_ssize_t i = 0; i < n;) {
        if (!IS_DIGIT(AT(i))) {
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        for (;;) {
            while (j < n && IS_DIGIT(AT(j))) {
                j++;
            }
            if (j + 1 < n && (AT(j) == '.' || AT(j) == ',') && IS_DIGIT(AT(j + 1))) {
                j += 2;
                continue;
            }
            break;
        }
        q->numbers++;
        if (j - i > q->longest) {
            q->longest = j - i;
        }
        if (spanset_add(set, kind, data, i, j - i) < 0) {
            return -1;
        }
        i = j;
    }
    q->distinct = set->used;

    /* Fractions, trying the paths in the engine's order: each optional \s first taken, then
     * skipped. */
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t end = -1;
        if (IS_DIGIT(AT(i))) {
            Py_ssize_t slashes[2] = {-1, -1}; /* where "/" may be: after \s taken, skipped */
            if (i + 1 < n && IS_SPACE(AT(i + 1))) {
                slashes[0] = i + 2;
            }
            slashes[1] = i + 1;
            for (int a = 0; a < 2 && end < 0; a++) {
                Py_ssize_t s = slashes[a];
                if (s < 0 || s >= n || AT(s) != '/') {
                    continue;
                }
                if (s + 2 < n && IS_SPACE(AT(s + 1)) && IS_DIGIT(AT(s + 2))) {
                    end = s + 3;
                }
                else if (s + 1 < n && IS_DIGIT(AT(s + 1))) {
                    end = s + 2;
                }
            }
        }
        if (end < 0) {
            i++;
        }
        else {
            q->fractions++;
            i = end;
        }
    }

    /* Decimals. */
    for (Py_ssize_t i = 0; i < n;) {
        if (i + 2 < n && IS_DIGIT(AT(i)) && AT(i + 1) == '.' && IS_DIGIT(AT(i + 2))) {
            q->decimals++;
            i += 3;
        }
        else {
            i++;
        }
    }

    return 0;
}

#undef AT

PyDoc_STRVAR(quantities_doc,
"quantities(text, numbers_too) -> (numbers, distinct, longest, fractions, decimals,\n"
"                                  sentence_ends)\n\n"
"Counts of `text` exactly as features.signals._quantities_python gives them: numbers\n"
"(r\"\\d+(?:[.,]\\d+)*\" matches), distinct numbers, the longest number's length, fractions\n"
"(r\"\\d\\s?/\\s?\\d\"), decimals (r\"\\d\\.\\d\"), all 0 unless `numbers_too` is true, and\n"
"sentence ends (r\"[.!?](?:\\s|$)\").");

static PyObject *
quantities(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "quantities takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *text = args[0];
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "quantities takes a str");
        return NULL;
    }
    int numbers_too = PyObject_IsTrue(args[1]);
    if (numbers_too < 0) {
        return NULL;
    }
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
    Quantities q = {0, 0, 0, 0, 0, 0};
    SpanSet set;
    memset(set.local, 0, sizeof(set.local));
    set.slots = set.local;
    set.mask = sizeof(set.local) / sizeof(set.local[0]) - 1;
    set.used = 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const void *data = PyUnicode_DATA(text);
    int status;
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        status = quantities_kind(PyUnicode_1BYTE_KIND, data, n, numbers_too, &q, &set);
        break;
    case PyUnicode_2BYTE_KIND:
        status = quantities_kind(PyUnicode_2BYTE_KIND, data, n, numbers_too, &q, &set);
        break;
    default:
        status = quantities_kind(PyUnicode_4BYTE_KIND, data, n, numbers_too, &q, &set);
        break;
    }
    if (set.slots != set.local) {
        PyMem_Free(set.slots);
    }
    if (status < 0) {
        return NULL;
    }
    return Py_BuildValue("(nnnnnn)", q.numbers, q.distinct, q.longest, q.fractions, q.decimals,
                         q.sentences);
}

/* Keyword groups: the compiled twin of features.signals._keyword_counts_python, the same loop
 * over the same lexicon (passed in, so the keyword lists live in one place). The words are
 * checked to be exact str, so comparing them runs no Python code; a dict lookup could (a key
 * with its own __eq__), so the list's size is re-read and each entry is held while used. */

typedef struct LexSlot LexSlot;

/* The words of the lower-cased window as runs of it (no str per word): word k is
 * lower[start[k] : start[k] + length[k]], with its lexicon slot (NULL when none). */
typedef struct {
    Py_ssize_t *start, *length;
    const LexSlot **slot;
    Py_ssize_t n, capacity;
} Spans;

/* The words a phrase is looked for among: a list of str, or (list NULL) runs of `lower`. */
typedef struct {
    PyObject *list;
    PyObject *lower;
    const Spans *spans;
} Words;

/* Whether run k of `w` has the code points of the str `token`. */
static int
run_is(const Words *w, Py_ssize_t k, PyObject *token)
{
    Py_ssize_t length = w->spans->length[k];
    if (PyUnicode_GET_LENGTH(token) != length) {
        return 0;
    }
    int kind = PyUnicode_KIND(w->lower), token_kind = PyUnicode_KIND(token);
    const void *data = PyUnicode_DATA(w->lower), *token_data = PyUnicode_DATA(token);
    Py_ssize_t start = w->spans->start[k];
    for (Py_ssize_t i = 0; i < length; i++) {
        if (PyUnicode_READ(kind, data, start + i) != PyUnicode_READ(token_kind, token_data, i)) {
            return 0;
        }
    }
    return 1;
}

/* Whether words[start : start + len(tokens)] == tokens, as Python's list comparison decides. */
static int
phrase_at(const Words *w, Py_ssize_t start, PyObject *tokens)
{
    Py_ssize_t size = PyList_GET_SIZE(tokens);
    Py_ssize_t n = w->list != NULL ? PyList_GET_SIZE(w->list) : w->spans->n;
    if (start < 0 || start > n - size) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < size; k++) {
        PyObject *token = PyList_GET_ITEM(tokens, k);
        if (w->list == NULL) {
            if (!PyUnicode_CheckExact(token)) {
                PyErr_SetString(PyExc_TypeError, "words and phrase tokens must be str");
                return -1;
            }
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(token) < 0) {
                return -1;
            }
#endif
            if (!run_is(w, start + k, token)) {
                return 0;
            }
            continue;
        }
        PyObject *word = PyList_GET_ITEM(w->list, start + k);
        if (!PyUnicode_CheckExact(word) || !PyUnicode_CheckExact(token)) {
            PyErr_SetString(PyExc_TypeError, "words and phrase tokens must be str");
            return -1;
        }
        int order = PyUnicode_Compare(word, token);
        if (order == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (order != 0) {
            return 0;
        }
    }
    return 1;
}

/* The int `obj`, checked to be in [0, n). */
static int
index_in(PyObject *obj, Py_ssize_t n, Py_ssize_t *out)
{
    Py_ssize_t value = PyLong_Check(obj) ? PyLong_AsSsize_t(obj) : -1;
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < 0 || value >= n) {
        PyErr_SetString(PyExc_ValueError, "malformed lexicon: index out of range");
        return -1;
    }
    *out = value;
    return 0;
}

/* Count words[i]'s lexicon entry (singles, phrases): each of its single-word groups, then each
 * phrase (offset of words[i] in it, its tokens, group) found around position i. */
static int
count_entry(const Words *words, Py_ssize_t i, PyObject *entry, Py_ssize_t n_counters,
            Py_ssize_t *counts)
{
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(entry, 0))
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(entry, 1))) {
        PyErr_SetString(PyExc_TypeError, "malformed lexicon entry");
        return -1;
    }
    PyObject *singles = PyTuple_GET_ITEM(entry, 0), *phrases = PyTuple_GET_ITEM(entry, 1);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(singles); k++) {
        Py_ssize_t group;
        if (index_in(PyTuple_GET_ITEM(singles, k), n_counters, &group) < 0) {
            return -1;
        }
        counts[group]++;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(phrases); k++) {
        PyObject *phrase = PyTuple_GET_ITEM(phrases, k);
        if (!PyTuple_CheckExact(phrase) || PyTuple_GET_SIZE(phrase) != 3
            || !PyList_CheckExact(PyTuple_GET_ITEM(phrase, 1))) {
            PyErr_SetString(PyExc_TypeError, "malformed lexicon phrase");
            return -1;
        }
        Py_ssize_t offset, group;
        if (index_in(PyTuple_GET_ITEM(phrase, 0), PY_SSIZE_T_MAX, &offset) < 0
            || index_in(PyTuple_GET_ITEM(phrase, 2), n_counters, &group) < 0) {
            return -1;
        }
        int found = phrase_at(words, i - offset, PyTuple_GET_ITEM(phrase, 1));
        if (found < 0) {
            return -1;
        }
        counts[group] += found;
    }
    return 0;
}

static int
count_keywords(PyObject *words, PyObject *lexicon, Py_ssize_t n_counters, Py_ssize_t *counts)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(words); i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(words, i))) {
            PyErr_SetString(PyExc_TypeError, "words must be a list of str");
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(words); i++) {
        PyObject *entry = PyDict_GetItemWithError(lexicon, PyList_GET_ITEM(words, i));
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            continue;
        }
        Py_INCREF(entry);
        Words w = {words, NULL, NULL};
        int status = count_entry(&w, i, entry, n_counters, counts);
        Py_DECREF(entry);
        if (status < 0) {
            return -1;
        }
    }
    return 0;
}

#define MAX_COUNTERS 1024

PyDoc_STRVAR(keyword_counts_doc,
"keyword_counts(lexicon, n_counters, words) -> list of n_counters ints\n\n"
"Matches per counter of the str `words` against `lexicon`, exactly as\n"
"features.signals._keyword_counts_python counts them against features.signals._LEXICON.");

static PyObject *
keyword_counts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "keyword_counts takes 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (!PyDict_CheckExact(args[0]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "keyword_counts takes a dict, an int, a list of str");
        return NULL;
    }
    Py_ssize_t n_counters;
    if (index_in(args[1], MAX_COUNTERS + 1, &n_counters) < 0) {
        return NULL;
    }
    Py_ssize_t counts[MAX_COUNTERS];
    memset(counts, 0, (size_t)n_counters * sizeof(Py_ssize_t));
    if (count_keywords(args[2], args[0], n_counters, counts) < 0) {
        return NULL;
    }
    return count_list(counts, n_counters);
}

/* ---------------------------------------------------------------------------------------------
 * The whole dense block: the compiled twin of features.signals._dense_signals_python, in one
 * call. Tokenisation, the character classes, the keyword groups, the arithmetic operators, the
 * quantities, the counted characters and substrings, and every value's arithmetic (the same
 * libm log1p and IEEE divisions as Python's float code) happen here. Five regexes stay Python's:
 * they are called from here, and only when a gate the reference also applies lets them run
 * (a code pattern's gate token, a backslash, a dollar, a brace), except the line-start pattern,
 * which is tried only on lines whose first character could start a match.
 */

/* What signals.py passes, once per call: (lexicon, n_counters, n_groups, code_patterns,
 * latex_cmd_re, latex_dollar_re, json_re, line_start_re, split_punct, tail_chars). */
typedef struct {
    PyObject *lexicon;
    Py_ssize_t n_counters, n_groups;
    PyObject *code_patterns; /* tuple: pattern j is gated by counter n_groups + j */
    PyObject *latex_cmd, *latex_dollar, *json, *line_start;
    PyObject *split_punct;
    Py_ssize_t tail;
} SignalSpec;

#define SPEC_ITEMS 10

static int
parse_signal_spec(PyObject *spec, SignalSpec *s)
{
    if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != SPEC_ITEMS) {
        PyErr_SetString(PyExc_TypeError, "spec must be the 10-tuple features.signals builds");
        return -1;
    }
    s->lexicon = PyTuple_GET_ITEM(spec, 0);
    s->code_patterns = PyTuple_GET_ITEM(spec, 3);
    s->latex_cmd = PyTuple_GET_ITEM(spec, 4);
    s->latex_dollar = PyTuple_GET_ITEM(spec, 5);
    s->json = PyTuple_GET_ITEM(spec, 6);
    s->line_start = PyTuple_GET_ITEM(spec, 7);
    s->split_punct = PyTuple_GET_ITEM(spec, 8);
    if (!PyDict_CheckExact(s->lexicon) || !PyTuple_CheckExact(s->code_patterns)
        || !PyUnicode_Check(s->split_punct)) {
        PyErr_SetString(PyExc_TypeError, "spec: malformed lexicon, patterns or punctuation");
        return -1;
    }
    if (index_in(PyTuple_GET_ITEM(spec, 1), MAX_COUNTERS + 1, &s->n_counters) < 0
        || index_in(PyTuple_GET_ITEM(spec, 2), s->n_counters + 1, &s->n_groups) < 0
        || index_in(PyTuple_GET_ITEM(spec, 9), PY_SSIZE_T_MAX, &s->tail) < 0) {
        return -1;
    }
    if (s->n_groups + PyTuple_GET_SIZE(s->code_patterns) > s->n_counters) {
        PyErr_SetString(PyExc_ValueError, "spec: more code patterns than counters");
        return -1;
    }
    return 0;
}

/* Splitting punctuation: an ASCII table and the sorted code points above it, rebuilt when
 * signals.py passes a different string (it passes the same object every call). */
static PyObject *punct_source = NULL;
/* dense_signals calls in progress: Python code run by an allocation (a finalizer) could call
 * dense_signals again with another spec while a scan still reads the tables, so a replaced
 * table is freed only when no scan is running (else it is left alone: one spec in practice). */
static int scans_running = 0;
static unsigned char punct_ascii[128];
static Py_UCS4 *punct_wide = NULL;
static Py_ssize_t punct_wide_n = 0;
/* Which blocks of 256 code points hold some splitting punctuation: most non-ASCII characters
 * (letters of a script, CJK ideographs) are in a block with none, and skip the search. */
#define PUNCT_PAGES (0x110000 >> 8)
static unsigned char *punct_pages = NULL;

static int
ucs4_order(const void *a, const void *b)
{
    Py_UCS4 x = *(const Py_UCS4 *)a, y = *(const Py_UCS4 *)b;
    return (x > y) - (x < y);
}

static int
punct_load(PyObject *punct)
{
    if (punct == punct_source) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(punct);
    Py_UCS4 *wide = PyMem_New(Py_UCS4, n > 0 ? n : 1);
    unsigned char *pages = PyMem_Calloc(PUNCT_PAGES, 1);
    if (wide == NULL || pages == NULL) {
        PyMem_Free(wide);
        PyMem_Free(pages);
        PyErr_NoMemory();
        return -1;
    }
    memset(punct_ascii, 0, sizeof(punct_ascii));
    Py_ssize_t n_wide = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(punct, i);
        if (c < 128) {
            punct_ascii[c] = 1;
        }
        else {
            wide[n_wide++] = c;
            pages[c >> 8] = 1;
        }
    }
    qsort(wide, (size_t)n_wide, sizeof(Py_UCS4), ucs4_order);
    Py_UCS4 *old_wide = punct_wide;
    unsigned char *old_pages = punct_pages;
    PyObject *old_source = punct_source;
    punct_wide = wide;
    punct_wide_n = n_wide;
    punct_pages = pages;
    punct_source = Py_NewRef(punct);
    if (scans_running == 0) {
        PyMem_Free(old_wide);
        PyMem_Free(old_pages);
        Py_XDECREF(old_source);
    }
    return 0;
}

static inline int
is_split_punct(Py_UCS4 c)
{
    if (c < 128) {
        return punct_ascii[c];
    }
    if (!punct_pages[c >> 8]) {
        return 0;
    }
    Py_ssize_t lo = 0, hi = punct_wide_n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (punct_wide[mid] < c) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo < punct_wide_n && punct_wide[lo] == c;
}

/* The lexicon's keys in a table of our own, so that a word is looked up from its characters
 * while it is being cut, without hashing a new str with SipHash and probing the dict: most of
 * the keyword step's cost. Built from the dict signals.py passes (the same object every call,
 * never changed), and rebuilt when another is passed. Keys compare by code points, which is
 * str equality; a lexicon with a key that is not an exact str is looked up in the dict. */
struct LexSlot {
    Py_UCS4 *chars; /* NULL: a free slot */
    Py_ssize_t length;
    uint64_t hash;
    PyObject *entry;
    /* An entry of single-word groups only (most are) is counted from these, without reading
     * its tuples again; -1: count the entry itself (phrases, or a malformed entry, which
     * raises then as it would from the dict). */
    int n_singles;
    int16_t singles[4];
};

/* The singles of a well-formed entry without phrases, checked against n_counters. */
static void
lex_singles(LexSlot *slot, Py_ssize_t n_counters)
{
    slot->n_singles = -1;
    PyObject *e = slot->entry;
    if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(e, 0))
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(e, 1))
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(e, 1)) != 0
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(e, 0)) > 4) {
        return;
    }
    PyObject *singles = PyTuple_GET_ITEM(e, 0);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(singles); k++) {
        PyObject *group = PyTuple_GET_ITEM(singles, k);
        Py_ssize_t g = PyLong_CheckExact(group) ? PyLong_AsSsize_t(group) : -1;
        if (g < 0 || g >= n_counters) {
            PyErr_Clear();
            return;
        }
        slot->singles[k] = (int16_t)g;
    }
    slot->n_singles = (int)PyTuple_GET_SIZE(singles);
}

static PyObject *lex_source = NULL; /* the dict the table was built from (held) */
static Py_ssize_t lex_counters = -1; /* the n_counters its singles were checked against */
/* One bit per key hash, 512 bytes: most words are no key, and this says so from a block small
 * enough to stay cached, where a probe of the table would miss the cache once per word. */
#define LEX_BITS 4096
static uint64_t lex_bits[LEX_BITS / 64];
#define LEX_BIT(h) ((size_t)((h) >> 52) & (LEX_BITS - 1))
static LexSlot *lex_slots = NULL;
static size_t lex_mask = 0;
static int lex_use_dict = 0;

#define FNV_START 0xcbf29ce484222325ull
#define FNV_STEP(h, c) (((h) ^ (uint64_t)(c)) * 0x100000001b3ull)

/* Frees a detached table (its globals already point elsewhere), unless a scan may read it. */
static void
lex_free(LexSlot *slots, size_t mask, PyObject *source)
{
    if (scans_running > 0) {
        return;
    }
    for (size_t k = 0; slots != NULL && k <= mask; k++) {
        PyMem_Free(slots[k].chars);
        Py_XDECREF(slots[k].entry);
    }
    PyMem_Free(slots);
    Py_XDECREF(source);
}

static int
lex_load(PyObject *lexicon, Py_ssize_t n_counters)
{
    if (lexicon == lex_source && n_counters == lex_counters) {
        return 0;
    }
    LexSlot *old_slots = lex_slots;
    PyObject *old_source = lex_source;
    size_t old_mask = lex_mask;
    lex_slots = NULL;
    lex_source = NULL; /* until the new table is complete */
    lex_use_dict = 0;
    memset(lex_bits, 0, sizeof(lex_bits));
    lex_free(old_slots, old_mask, old_source);
    size_t size = 16;
    while (size < (size_t)PyDict_GET_SIZE(lexicon) * 2 + 1) {
        size <<= 1;
    }
    LexSlot *slots = PyMem_Calloc(size, sizeof(LexSlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(lexicon, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            lex_use_dict = 1;
            continue;
        }
        Py_ssize_t length = PyUnicode_GET_LENGTH(key);
        Py_UCS4 *chars = PyUnicode_AsUCS4Copy(key);
        if (chars == NULL) {
            lex_free(slots, size - 1, NULL);
            return -1;
        }
        uint64_t h = FNV_START;
        for (Py_ssize_t k = 0; k < length; k++) {
            h = FNV_STEP(h, chars[k]);
        }
        size_t j = (size_t)h & (size - 1);
        while (slots[j].chars != NULL) {
            j = (j + 1) & (size - 1);
        }
        slots[j] = (LexSlot){chars, length, h, Py_NewRef(value), -1, {0}};
        lex_singles(&slots[j], n_counters);
        lex_bits[LEX_BIT(h) / 64] |= (uint64_t)1 << (LEX_BIT(h) % 64);
    }
    lex_slots = slots;
    lex_mask = size - 1;
    lex_source = Py_NewRef(lexicon);
    lex_counters = n_counters;
    return 0;
}

/* The slot of the word data[start : end], or NULL when it is not a key. */
static ALWAYS_INLINE const LexSlot *
lex_find_kind(int kind, const void *data, Py_ssize_t start, Py_ssize_t end, uint64_t h)
{
    if (!(lex_bits[LEX_BIT(h) / 64] >> (LEX_BIT(h) % 64) & 1)) {
        return NULL;
    }
    for (size_t j = (size_t)h & lex_mask;; j = (j + 1) & lex_mask) {
        const LexSlot *slot = &lex_slots[j];
        if (slot->chars == NULL) {
            return NULL;
        }
        if (slot->hash == h && slot->length == end - start) {
            Py_ssize_t k = 0;
            while (k < slot->length && slot->chars[k] == PyUnicode_READ(kind, data, start + k)) {
                k++;
            }
            if (k == slot->length) {
                return slot;
            }
        }
    }
}

static void
spans_free(Spans *sp)
{
    PyMem_Free(sp->start);
    PyMem_Free(sp->length);
    PyMem_Free(sp->slot);
    sp->start = sp->length = NULL;
    sp->slot = NULL;
    sp->n = sp->capacity = 0;
}

static int
spans_grow(Spans *sp)
{
    Py_ssize_t grown = sp->capacity ? sp->capacity * 2 : 64;
    Py_ssize_t *start = PyMem_Resize(sp->start, Py_ssize_t, grown);
    if (start != NULL) {
        sp->start = start;
    }
    Py_ssize_t *length = start ? PyMem_Resize(sp->length, Py_ssize_t, grown) : NULL;
    if (length != NULL) {
        sp->length = length;
    }
    const LexSlot **slot = length ? PyMem_Resize(sp->slot, const LexSlot *, grown) : NULL;
    if (slot == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    sp->slot = slot;
    sp->capacity = grown;
    return 0;
}

/* signals.tokenize: the maximal runs of characters that are neither whitespace (str.split's
 * and re's \s, both Py_UNICODE_ISSPACE) nor splitting punctuation, appended to `sp` with each
 * word's lexicon slot. Adds the total length of the words to *chars. */
static ALWAYS_INLINE int
tokenize_kind(int kind, PyObject *lower, Spans *sp, Py_ssize_t *chars)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(lower);
    const void *data = PyUnicode_DATA(lower);
    Py_ssize_t start = -1;
    uint64_t h = FNV_START;
    for (Py_ssize_t i = 0; i <= n; i++) {
        int split = 1;
        Py_UCS4 c = 0;
        if (i < n) {
            c = PyUnicode_READ(kind, data, i);
            split = Py_UNICODE_ISSPACE(c) || is_split_punct(c);
        }
        if (!split) {
            if (start < 0) {
                start = i;
                h = FNV_START;
            }
            h = FNV_STEP(h, c);
            continue;
        }
        if (start < 0) {
            continue;
        }
        if (sp->n == sp->capacity && spans_grow(sp) < 0) {
            return -1;
        }
        sp->start[sp->n] = start;
        sp->length[sp->n] = i - start;
        sp->slot[sp->n] = lex_find_kind(kind, data, start, i, h);
        sp->n++;
        *chars += i - start;
        start = -1;
    }
    return 0;
}

/* The words of `sp` as a list of new str (what dense_signals returns, and what the phrase and
 * dictionary lookups read). */
static PyObject *
words_list(PyObject *lower, const Spans *sp)
{
    PyObject *words = PyList_New(sp->n);
    if (words == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < sp->n; k++) {
        PyObject *word = PyUnicode_Substring(lower, sp->start[k], sp->start[k] + sp->length[k]);
        if (word == NULL) {
            Py_DECREF(words);
            return NULL;
        }
        PyList_SET_ITEM(words, k, word);
    }
    return words;
}

/* The words of `lower` into `sp`, and their keyword counts (signals._keyword_counts_python),
 * with the table lex_load built from `lexicon`. The words are made into a list of str only
 * when a lookup needs one (a phrase's anchor word, or the dictionary fallback): then *list is
 * that new list; else it stays NULL. */
static int
words_and_keywords(PyObject *lower, PyObject *lexicon, Py_ssize_t n_counters,
                   Py_ssize_t *counters, Py_ssize_t *chars, Spans *sp, PyObject **list)
{
    *list = NULL;
    int status;
    switch (PyUnicode_KIND(lower)) {
    case PyUnicode_1BYTE_KIND:
        status = tokenize_kind(PyUnicode_1BYTE_KIND, lower, sp, chars);
        break;
    case PyUnicode_2BYTE_KIND:
        status = tokenize_kind(PyUnicode_2BYTE_KIND, lower, sp, chars);
        break;
    default:
        status = tokenize_kind(PyUnicode_4BYTE_KIND, lower, sp, chars);
        break;
    }
    if (status == 0 && lex_use_dict) {
        *list = words_list(lower, sp);
        status = *list == NULL ? -1 : count_keywords(*list, lexicon, n_counters, counters);
    }
    else if (status == 0) {
        /* The table holds its own references to the entries: none can go away here. */
        for (Py_ssize_t i = 0; status == 0 && i < sp->n; i++) {
            const LexSlot *slot = sp->slot[i];
            if (slot == NULL) {
                continue;
            }
            if (slot->n_singles < 0) {
                Words w = {NULL, lower, sp};
                status = count_entry(&w, i, slot->entry, n_counters, counters);
                continue;
            }
            for (int k = 0; k < slot->n_singles; k++) {
                counters[slot->singles[k]]++;
            }
        }
    }
    if (status < 0) {
        Py_CLEAR(*list);
        return -1;
    }
    return 0;
}

/* What one pass over the window counts besides the character classes. */
typedef struct {
    Py_ssize_t classes[N_CLASSES];
    Py_ssize_t fences, questions, percents, commas;
    int backslash, dollar, brace, colon, w; /* seen at all */
} WindowCounts;

static ALWAYS_INLINE void
window_counts_kind(int kind, const void *data, Py_ssize_t n, WindowCounts *w)
{
    Py_ssize_t ticks = 0; /* backticks in the current run: str.count("```") takes run // 3 */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        w->classes[c < 256 ? latin1_class[c] : script_class(c)]++;
        if (c == '`') {
            ticks++;
            continue;
        }
        w->fences += ticks / 3;
        ticks = 0;
        switch (c) {
        case '?':
        case 0xFF1F:
            w->questions++;
            break;
        case '%':
            w->percents++;
            break;
        case ',':
            w->commas++;
            break;
        case '\\':
            w->backslash = 1;
            break;
        case '$':
            w->dollar = 1;
            break;
        case '{':
            w->brace = 1;
            break;
        case ':':
            w->colon = 1;
            break;
        case 'w':
        case 'W':
            w->w = 1;
            break;
        default:
            break;
        }
    }
    w->fences += ticks / 3;
}

#define AT(i) PyUnicode_READ(kind, data, (i))

/* signals._arithmetic: per operator, findall of op(?:(?<=\d.)|(?<=\d[ \t].))[ \t]?(?=\d). A
 * match is the operator (and one space or tab after it), never another operator, so the
 * matches are exactly the operators with a digit before (optionally one space or tab between)
 * and a digit after (likewise). */
static ALWAYS_INLINE Py_ssize_t
arithmetic_kind(int kind, const void *data, Py_ssize_t n)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 1; i + 1 < n; i++) {
        Py_UCS4 c = AT(i);
        if (!(c == '+' || c == '-' || c == '*' || c == '/' || c == '^' || c == '=' || c == 0xD7
              || c == 0xF7)) {
            continue;
        }
        Py_UCS4 before = AT(i - 1), after = AT(i + 1);
        int left = IS_DIGIT(before)
                   || ((before == ' ' || before == '\t') && i >= 2 && IS_DIGIT(AT(i - 2)));
        int right = IS_DIGIT(after)
                    || ((after == ' ' || after == '\t') && i + 2 < n && IS_DIGIT(AT(i + 2)));
        count += left && right;
    }
    return count;
}

/* The line-start prefilter: whether signals._LINE_START_RE could match a line whose first
 * character after spaces and tabs is at q. It only rules lines out (the pattern itself decides
 * the rest), and never on a character beyond ASCII: those may be Unicode digits, or letters
 * such as "ı" or "ſ" that (?i) matches to ASCII ones. */

/* After a marker word: whether (?:[ \t]{0,3}#?\d{1,3})?[ \t*]{0,3}: could follow from t, i.e.
 * whether a ":" (or a non-ASCII character) comes within 10 characters of [ \t*#0-9]. */
static ALWAYS_INLINE int
marker_tail_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t t)
{
    for (Py_ssize_t k = t; k < n && k <= t + 10; k++) {
        Py_UCS4 c = AT(k);
        if (c == ':' || c >= 128) {
            return 1;
        }
        if (!(c == ' ' || c == '\t' || c == '*' || c == '#' || (c >= '0' && c <= '9'))) {
            return 0;
        }
    }
    return 0;
}

/* Whether `word` (lower-case ASCII) is at q in any case, then a marker tail could follow. */
static ALWAYS_INLINE int
marker_at_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t q, const char *word)
{
    for (; *word; word++, q++) {
        if (q >= n) {
            return 0;
        }
        Py_UCS4 c = AT(q);
        if (c >= 128) {
            return 1;
        }
        if ((c | 0x20) != (Py_UCS4)*word || !((c | 0x20) >= 'a' && (c | 0x20) <= 'z')) {
            return 0;
        }
    }
    return marker_tail_kind(kind, data, n, q);
}

static ALWAYS_INLINE int
line_may_start_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t q)
{
    Py_UCS4 c = AT(q);
    if (c >= 128 || c == '#' || c == '*') {
        return 1;
    }
    Py_UCS4 next = q + 1 < n ? AT(q + 1) : 0;
    if (c >= '0' && c <= '9') { /* a step: \d{1,3}[.)][ \t] */
        for (Py_ssize_t k = q + 1; k < n && k <= q + 3; k++) {
            Py_UCS4 d = AT(k);
            if (d >= 128) {
                return 1;
            }
            if (d == '.' || d == ')') {
                return k + 1 < n && (AT(k + 1) == ' ' || AT(k + 1) == '\t');
            }
            if (!(d >= '0' && d <= '9')) {
                return 0;
            }
        }
        return 0;
    }
    if (c == '(') { /* an option: \([A-Ha-h]\) */
        return q + 2 < n && ((next >= 'A' && next <= 'H') || (next >= 'a' && next <= 'h'))
               && AT(q + 2) == ')';
    }
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) {
        return 0;
    }
    Py_UCS4 lc = c | 0x20;
    if (lc <= 'h' && (next == '.' || next == ')')) { /* an option: [A-Ha-h][.)] */
        return 1;
    }
    switch (lc) {
    case 'q':
        return marker_at_kind(kind, data, n, q, "q") || marker_at_kind(kind, data, n, q, "question");
    case 'a':
        return marker_at_kind(kind, data, n, q, "a") || marker_at_kind(kind, data, n, q, "answer");
    case 'i':
        return marker_at_kind(kind, data, n, q, "input");
    case 'o':
        return marker_at_kind(kind, data, n, q, "output");
    case 'e':
        return marker_at_kind(kind, data, n, q, "example");
    case 's':
        return marker_at_kind(kind, data, n, q, "solution");
    case 'p':
        return marker_at_kind(kind, data, n, q, "problem");
    default:
        return 0;
    }
}

/* signals._LINE_START_RE's few-shot markers, in the pattern's order. */
static const char *const marker_words[] = {
    "q", "a", "question", "answer", "input", "output", "example", "solution", "problem",
};
#define N_MARKER_WORDS ((int)(sizeof(marker_words) / sizeof(marker_words[0])))
static PyObject *marker_strs[N_MARKER_WORDS];

#define IS_BLANK(c) ((c) == ' ' || (c) == '\t')
#define IS_ASCII_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_OPTION(c) (((c) >= 'A' && (c) <= 'H') || ((c) >= 'a' && (c) <= 'h'))

/* [ \t*]{0,3}: at j. */
static ALWAYS_INLINE int
colon_after_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t j)
{
    for (Py_ssize_t b = 0; b <= 3 && j + b < n; b++) {
        Py_UCS4 c = AT(j + b);
        if (c == ':') {
            return 1;
        }
        if (!(IS_BLANK(c) || c == '*')) {
            return 0;
        }
    }
    return 0;
}

/* (?:[ \t]{0,3}#?\d{1,3})?[ \t*]{0,3}: at t, on ASCII text: whether any path matches. */
static ALWAYS_INLINE int
marker_tail_ascii_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t t)
{
    if (colon_after_kind(kind, data, n, t)) {
        return 1;
    }
    for (Py_ssize_t a = 0; a <= 3; a++) {
        if (a > 0 && !(t + a - 1 < n && IS_BLANK(AT(t + a - 1)))) {
            break;
        }
        for (int hash = 0; hash <= 1; hash++) {
            Py_ssize_t d0 = t + a + hash;
            if (hash && !(t + a < n && AT(t + a) == '#')) {
                continue;
            }
            for (Py_ssize_t d = 1; d <= 3 && d0 + d - 1 < n && IS_ASCII_DIGIT(AT(d0 + d - 1)); d++) {
                if (colon_after_kind(kind, data, n, d0 + d)) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

/* What _LINE_START_RE matches at the newline p (-1: the one before the window) when the line's
 * first characters are ASCII, where its (?i) and \d mean plain ASCII: 0 nothing, 1 a step, 2 an
 * option, 3 + k the marker word k. The line's first character after spaces and tabs is at q.
 * Its alternatives are tried in order at the longest run of spaces and tabs ([ \t]{0,8}), and
 * a shorter run only lets the marker's own [ \t]{0,3} take the rest. */
static ALWAYS_INLINE int
line_match_ascii_kind(int kind, const void *data, Py_ssize_t n, Py_ssize_t p, Py_ssize_t q)
{
    Py_ssize_t spaces = q - (p + 1);
    Py_UCS4 c = AT(q);
    if (spaces <= 8) {
        Py_ssize_t r = 0; /* \d{1,3}[.)][ \t] */
        while (r <= 3 && q + r < n && IS_ASCII_DIGIT(AT(q + r))) {
            r++;
        }
        if (r >= 1 && r <= 3 && q + r + 1 < n && (AT(q + r) == '.' || AT(q + r) == ')')
            && IS_BLANK(AT(q + r + 1))) {
            return 1;
        }
        Py_ssize_t e = -1; /* (?:\([A-Ha-h]\)|[A-Ha-h][.)])(?=[ \t\r\n]|$) */
        if (c == '(' && q + 2 < n && IS_OPTION(AT(q + 1)) && AT(q + 2) == ')') {
            e = q + 3;
        }
        else if (IS_OPTION(c) && q + 1 < n && (AT(q + 1) == '.' || AT(q + 1) == ')')) {
            e = q + 2;
        }
        if (e >= 0) {
            if (e == n) {
                return 2;
            }
            Py_UCS4 next = AT(e);
            if (IS_BLANK(next) || next == '\r' || next == '\n') {
                return 2;
            }
        }
    }
    /* [#*]{0,4}[ \t]{0,3}(?i:marker)tail */
    Py_ssize_t at = q;
    if (c == '#' || c == '*') {
        if (spaces > 8) {
            return 0;
        }
        while (at < n && at - q <= 4 && (AT(at) == '#' || AT(at) == '*')) {
            at++;
        }
        if (at - q > 4) {
            return 0;
        }
        Py_ssize_t blank = at;
        while (at < n && at - blank <= 3 && IS_BLANK(AT(at))) {
            at++;
        }
        if (at - blank > 3) {
            return 0;
        }
    }
    else if (spaces > 11) {
        return 0;
    }
    for (int k = 0; k < N_MARKER_WORDS; k++) {
        const char *w = marker_words[k];
        Py_ssize_t j = at;
        while (*w && j < n && (AT(j) | 0x20) == (Py_UCS4)*w
               && ((AT(j) | 0x20) >= 'a' && (AT(j) | 0x20) <= 'z')) {
            w++;
            j++;
        }
        if (*w == '\0' && marker_tail_ascii_kind(kind, data, n, j)) {
            return 3 + k;
        }
    }
    return 0;
}

/* The lines that may start a match (see line_may_start_kind): decided here when their first
 * 40 characters are ASCII (the pattern reads at most 27 after the spaces and tabs), counted
 * into `decided` (steps, options, then per marker word); the others' newline positions go to
 * `starts` for the pattern itself. Returns how many went to `starts`. */
static ALWAYS_INLINE Py_ssize_t
line_candidates_kind(int kind, const void *data, Py_ssize_t n, int ascii, Py_ssize_t *starts,
                     Py_ssize_t *decided)
{
    Py_ssize_t found = 0;
    for (Py_ssize_t p = -1; p < n; p++) {
        if (p >= 0 && AT(p) != '\n') {
            continue;
        }
        Py_ssize_t q = p + 1;
        while (q < n && IS_BLANK(AT(q))) {
            q++;
        }
        if (q >= n || !line_may_start_kind(kind, data, n, q)) {
            continue;
        }
        int plain = ascii;
        for (Py_ssize_t k = q; !plain && k < n && k < q + 40; k++) {
            if (AT(k) >= 128) {
                break;
            }
            plain = k + 1 == n || k + 1 == q + 40;
        }
        if (!plain) {
            starts[found++] = p;
            continue;
        }
        int what = line_match_ascii_kind(kind, data, n, p, q);
        if (what) {
            decided[what - 1]++;
        }
    }
    return found;
}

#undef AT

static PyObject *str_findall, *str_match, *str_lower, *str_groups, *str_newline;
static PyObject *str_scheme, *str_www, *str_scheme_www;

static Py_ssize_t
findall_count(PyObject *pattern, PyObject *text)
{
    PyObject *found = PyObject_CallMethodOneArg(pattern, str_findall, text);
    if (found == NULL) {
        return -1;
    }
    Py_ssize_t count = PyObject_Length(found);
    Py_DECREF(found);
    return count;
}

/* signals._line_starts: numbered steps, options, and repeats of few-shot markers (per
 * lower-cased marker, occurrences - 1), from the lines decided in C (`decided`: steps,
 * options, per marker word) and the pattern run on the others (`starts`). */
static int
line_starts(const SignalSpec *s, PyObject *window, const Py_ssize_t *starts, Py_ssize_t found,
            const Py_ssize_t *decided, Py_ssize_t out[3])
{
    out[0] = decided[0];
    out[1] = decided[1];
    Py_ssize_t n_markers = 0;
    for (int k = 0; k < N_MARKER_WORDS; k++) {
        n_markers += decided[2 + k];
    }
    if (found == 0 && n_markers == 0) {
        return 0;
    }
    PyObject *markers = PySet_New(NULL);
    if (markers == NULL) {
        return -1;
    }
    for (int k = 0; k < N_MARKER_WORDS; k++) {
        if (decided[2 + k] && PySet_Add(markers, marker_strs[k]) < 0) {
            goto fail;
        }
    }
    for (Py_ssize_t k = 0; k < found; k++) {
        PyObject *m;
        if (starts[k] >= 0) {
            PyObject *pos = PyLong_FromSsize_t(starts[k]);
            if (pos == NULL) {
                goto fail;
            }
            m = PyObject_CallMethodObjArgs(s->line_start, str_match, window, pos, NULL);
            Py_DECREF(pos);
        }
        else {
            /* "\n" + the window's first line (and its newline): the pattern never reads past
             * the character after a line, and "$" there agrees with the "\n" that follows. */
            Py_ssize_t n = PyUnicode_GET_LENGTH(window);
            Py_ssize_t end = PyUnicode_FindChar(window, '\n', 0, n, 1);
            if (end == -2) {
                goto fail;
            }
            PyObject *line = PyUnicode_Substring(window, 0, end < 0 ? n : end + 1);
            PyObject *first = line == NULL ? NULL : PyUnicode_Concat(str_newline, line);
            Py_XDECREF(line);
            if (first == NULL) {
                goto fail;
            }
            m = PyObject_CallMethodOneArg(s->line_start, str_match, first);
            Py_DECREF(first);
        }
        if (m == NULL) {
            goto fail;
        }
        if (m == Py_None) {
            Py_DECREF(m);
            continue;
        }
        PyObject *groups = PyObject_CallMethodNoArgs(m, str_groups);
        Py_DECREF(m);
        if (groups == NULL) {
            goto fail;
        }
        if (!PyTuple_Check(groups) || PyTuple_GET_SIZE(groups) != 3) {
            Py_DECREF(groups);
            PyErr_SetString(PyExc_TypeError, "the line-start pattern must have 3 groups");
            goto fail;
        }
        if (PyTuple_GET_ITEM(groups, 0) != Py_None) {
            out[0]++;
        }
        else if (PyTuple_GET_ITEM(groups, 1) != Py_None) {
            out[1]++;
        }
        else {
            PyObject *lowered = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(groups, 2), str_lower);
            int added = lowered == NULL ? -1 : PySet_Add(markers, lowered);
            Py_XDECREF(lowered);
            if (added < 0) {
                Py_DECREF(groups);
                goto fail;
            }
            n_markers++;
        }
        Py_DECREF(groups);
    }
    out[2] = n_markers - PySet_GET_SIZE(markers);
    Py_DECREF(markers);
    return 0;
fail:
    Py_DECREF(markers);
    return -1;
}

/* math.log1p of a float, errors included. */
static int
log1p_of(double x, double *out)
{
    if (x <= -1.0) {
        PyErr_SetString(PyExc_ValueError, "math domain error");
        return -1;
    }
    *out = x == 0.0 ? x : log1p(x);
    return 0;
}

static int
log1p_obj(PyObject *obj, double *out)
{
    double x = PyFloat_AsDouble(obj);
    if (x == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return log1p_of(x, out);
}

#define N_LENGTH 9
#define N_COUNTS 10
#define N_RATIOS 4
#define N_SCRIPTS 6
#define N_QUANTITIES 8

/* round(n_words * n_chars / n_window), with Python's exact int arithmetic and rounding. */
static int
extrapolated_words(Py_ssize_t n_words, Py_ssize_t n_chars, Py_ssize_t n_window, double *out)
{
    PyObject *a = PyLong_FromSsize_t(n_words), *b = PyLong_FromSsize_t(n_chars);
    PyObject *c = PyLong_FromSsize_t(n_window);
    PyObject *product = a && b ? PyNumber_Multiply(a, b) : NULL;
    PyObject *ratio = product && c ? PyNumber_TrueDivide(product, c) : NULL;
    PyObject *rounded = ratio ? PyObject_CallMethod(ratio, "__round__", NULL) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    Py_XDECREF(product);
    Py_XDECREF(ratio);
    if (rounded == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(rounded);
    Py_DECREF(rounded);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* How many code points of `text` are "\n": str.count("\n"), whose search steps through two-
 * and four-byte strings one character at a time (the whole prompt is counted, not only the
 * window). Blocks of 255 code points are counted in a byte-wide accumulator, which the
 * compiler turns into compares of 16 to 64 characters at a time. */
#define NEWLINES_IN(TYPE)                                                                      \
    do {                                                                                       \
        const TYPE *p = (const TYPE *)PyUnicode_DATA(text);                                    \
        for (Py_ssize_t start = 0; start < n; start += 255) {                                  \
            Py_ssize_t end = n - start > 255 ? start + 255 : n;                                \
            unsigned char block = 0;                                                           \
            for (Py_ssize_t i = start; i < end; i++) {                                         \
                block += p[i] == '\n';                                                         \
            }                                                                                  \
            count += block;                                                                    \
        }                                                                                      \
    } while (0)

static Py_ssize_t
newline_count(PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), count = 0;
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        NEWLINES_IN(Py_UCS1);
        break;
    case PyUnicode_2BYTE_KIND:
        NEWLINES_IN(Py_UCS2);
        break;
    default:
        NEWLINES_IN(Py_UCS4);
        break;
    }
    return count;
}

PyDoc_STRVAR(has_surrogates_doc,
"has_surrogates(text) -> bool\n\n"
"True when `text` holds a surrogate code point (U+D800 to U+DFFF), which is exactly when\n"
"text.encode('utf-8') fails; without building the bytes.");

/* Blocks of 256 code points are OR-ed together without a branch (so the loop vectorises), then
 * checked: a string without surrogates, the usual case, is read once at memory speed. */
static PyObject *
has_surrogates(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "has_surrogates: text must be a str");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
#endif
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    if (kind == PyUnicode_1BYTE_KIND) { /* code points below 256 */
        Py_RETURN_FALSE;
    }
    for (Py_ssize_t start = 0; start < n; start += 256) {
        Py_ssize_t end = n - start > 256 ? start + 256 : n;
        unsigned int found = 0;
        if (kind == PyUnicode_2BYTE_KIND) {
            const Py_UCS2 *p = PyUnicode_2BYTE_DATA(text);
            for (Py_ssize_t i = start; i < end; i++) {
                found |= (p[i] & 0xF800u) == 0xD800u;
            }
        }
        else {
            const Py_UCS4 *p = PyUnicode_4BYTE_DATA(text);
            for (Py_ssize_t i = start; i < end; i++) {
                found |= (p[i] & 0xFFFFF800u) == 0xD800u;
            }
        }
        if (found) {
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

/* The window's counts, everything dense_signals reads from it. */
typedef struct {
    WindowCounts w;
    Py_ssize_t arithmetic, code, latex, urls, json, lines[3];
    Quantities q;
} Scan;

static Scratch starts_scratch; /* scan_window_str's candidate line starts */

static int
scan_window_str(const SignalSpec *s, PyObject *window, PyObject *lower,
                const Py_ssize_t *counters, Scan *out)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(window);
    const void *data = PyUnicode_DATA(window);
    int kind = PyUnicode_KIND(window);
    size_t starts_size;
    Py_ssize_t *starts = scratch_take(&starts_scratch, (size_t)(n + 1) * sizeof(Py_ssize_t),
                                      &starts_size);
    if (starts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t found;
    Py_ssize_t decided[2 + N_MARKER_WORDS] = {0};
    int ascii = PyUnicode_IS_ASCII(window);
    SpanSet set;
    memset(set.local, 0, sizeof(set.local));
    set.slots = set.local;
    set.mask = sizeof(set.local) / sizeof(set.local[0]) - 1;
    set.used = 0;
    int status = 0;
    switch (kind) {
    case PyUnicode_1BYTE_KIND:
        window_counts_kind(PyUnicode_1BYTE_KIND, data, n, &out->w);
        found = line_candidates_kind(PyUnicode_1BYTE_KIND, data, n, ascii, starts, decided);
        out->arithmetic = out->w.classes[C_DIGIT] > 1
                              ? arithmetic_kind(PyUnicode_1BYTE_KIND, data, n) : 0;
        status = quantities_kind(PyUnicode_1BYTE_KIND, data, n, out->w.classes[C_DIGIT] > 0,
                                 &out->q, &set);
        break;
    case PyUnicode_2BYTE_KIND:
        window_counts_kind(PyUnicode_2BYTE_KIND, data, n, &out->w);
        found = line_candidates_kind(PyUnicode_2BYTE_KIND, data, n, ascii, starts, decided);
        out->arithmetic = out->w.classes[C_DIGIT] > 1
                              ? arithmetic_kind(PyUnicode_2BYTE_KIND, data, n) : 0;
        status = quantities_kind(PyUnicode_2BYTE_KIND, data, n, out->w.classes[C_DIGIT] > 0,
                                 &out->q, &set);
        break;
    default:
        window_counts_kind(PyUnicode_4BYTE_KIND, data, n, &out->w);
        found = line_candidates_kind(PyUnicode_4BYTE_KIND, data, n, ascii, starts, decided);
        out->arithmetic = out->w.classes[C_DIGIT] > 1
                              ? arithmetic_kind(PyUnicode_4BYTE_KIND, data, n) : 0;
        status = quantities_kind(PyUnicode_4BYTE_KIND, data, n, out->w.classes[C_DIGIT] > 0,
                                 &out->q, &set);
        break;
    }
    if (set.slots != set.local) {
        PyMem_Free(set.slots);
    }
    if (status < 0 || line_starts(s, window, starts, found, decided, out->lines) < 0) {
        scratch_give(&starts_scratch, starts, starts_size);
        return -1;
    }
    scratch_give(&starts_scratch, starts, starts_size);

    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(s->code_patterns); j++) {
        if (counters[s->n_groups + j]) {
            Py_ssize_t c = findall_count(PyTuple_GET_ITEM(s->code_patterns, j), window);
            if (c < 0) {
                return -1;
            }
            out->code += c;
        }
    }
    if (out->w.backslash) {
        Py_ssize_t c = findall_count(s->latex_cmd, window);
        if (c < 0) {
            return -1;
        }
        out->latex += c;
    }
    if (out->w.dollar) {
        Py_ssize_t c = findall_count(s->latex_dollar, window);
        if (c < 0) {
            return -1;
        }
        out->latex += c;
    }
    if (out->w.brace && (out->json = findall_count(s->json, window)) < 0) {
        return -1;
    }
    /* URLs on the lower-cased window, as str.count counts: "://", plus "www." not preceded by
     * "://". Lower-casing makes no ":" and no "w" but from "W", so without them there is none. */
    Py_ssize_t len = PyUnicode_GET_LENGTH(lower), urls = 0;
    if (out->w.colon && (urls = PyUnicode_Count(lower, str_scheme, 0, len)) < 0) {
        return -1;
    }
    Py_ssize_t www = out->w.w ? PyUnicode_Count(lower, str_www, 0, len) : 0;
    if (www < 0) {
        return -1;
    }
    if (www && urls) {
        Py_ssize_t both = PyUnicode_Count(lower, str_scheme_www, 0, len);
        if (both < 0) {
            return -1;
        }
        www -= both;
    }
    urls += www;
    out->urls = urls;
    return 0;
}

PyDoc_STRVAR(dense_signals_doc,
"dense_signals(text, last_user_chars, turns, images, has_system, max_scan_chars, spec)\n"
"    -> (values, words)\n\n"
"The dense feature values (float64 bytes in a bytearray) and the scan window's word tokens,\n"
"exactly as features.signals._dense_signals_python gives them; `spec` is the tuple\n"
"features.signals builds once (lexicon, patterns, punctuation).");

/* What feature_row hashes after the dense values: the window's words as runs of its
 * lower-cased copy (and as a list of str when the keyword lookups made one). */
typedef struct {
    PyObject *lower; /* a new reference, which the spans point into */
    Spans spans;
    PyObject *list; /* a new reference, or NULL */
} RowWords;

static PyObject *dense_signals_impl(PyObject *const *args, Py_ssize_t pad_to, RowWords *out);

static PyObject *
dense_signals_c(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "dense_signals takes 7 arguments, got %zd", nargs);
        return NULL;
    }
    return dense_signals_impl(args, -1, NULL);
}

/* dense_signals' (values, words), the values zero-padded to `pad_to` doubles when it is not
 * negative (ValueError when they do not fit). With `out`, only the values, and the words go to
 * `out` as runs of the lower-cased window (no str per word; see RowWords). */
static PyObject *
dense_signals_impl(PyObject *const *args, Py_ssize_t pad_to, RowWords *out)
{
    PyObject *text = args[0];
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "dense_signals: text must be a str");
        return NULL;
    }
    SignalSpec s;
    Py_ssize_t last_user_chars, max_scan;
    if (index_in(args[1], PY_SSIZE_T_MAX, &last_user_chars) < 0
        || index_in(args[5], PY_SSIZE_T_MAX, &max_scan) < 0 || parse_signal_spec(args[6], &s) < 0
        || punct_load(s.split_punct) < 0 || lex_load(s.lexicon, s.n_counters) < 0) {
        return NULL;
    }
    prefetch_block(lex_bits, sizeof(lex_bits));
    prefetch_block(latin1_class, sizeof(latin1_class));
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
    double values[2 * (N_LENGTH + N_COUNTS + N_RATIOS + MAX_COUNTERS + N_SCRIPTS + N_QUANTITIES)
                  + 1];
    Py_ssize_t n_chars = PyUnicode_GET_LENGTH(text);
    /* signals.scan_window */
    PyObject *window;
    if (max_scan > PY_SSIZE_T_MAX - s.tail || n_chars <= max_scan + s.tail) {
        window = Py_NewRef(text);
    }
    else {
        PyObject *head = PyUnicode_Substring(text, 0, max_scan);
        PyObject *tail = PyUnicode_Substring(text, n_chars - s.tail, n_chars);
        PyObject *joined = head ? PyUnicode_Concat(head, str_newline) : NULL;
        window = joined && tail ? PyUnicode_Concat(joined, tail) : NULL;
        Py_XDECREF(head);
        Py_XDECREF(tail);
        Py_XDECREF(joined);
        if (window == NULL) {
            return NULL;
        }
    }
    PyObject *lower = NULL, *words = NULL, *result = NULL;
    Spans spans = {NULL, NULL, NULL, 0, 0};
    Py_ssize_t counters[MAX_COUNTERS];
    memset(counters, 0, sizeof(counters));
    scans_running++; /* from here on, Python code may run (allocations, regexes) */
    lower = PyObject_CallMethodNoArgs(window, str_lower);
    if (lower == NULL) {
        goto done;
    }
    if (!PyUnicode_Check(lower)) {
        PyErr_SetString(PyExc_TypeError, "dense_signals: lower() must return a str");
        goto done;
    }
    Py_ssize_t word_chars = 0;
    if (words_and_keywords(lower, s.lexicon, s.n_counters, counters, &word_chars, &spans, &words)
        < 0) {
        goto done;
    }
    Scan scan;
    memset(&scan, 0, sizeof(scan));
    if (scan_window_str(&s, window, lower, counters, &scan) < 0) {
        goto done;
    }

    Py_ssize_t n_window = PyUnicode_GET_LENGTH(window);
    Py_ssize_t n_words = spans.n;
    double *v = values;
    /* Length. */
    double total_words = (double)n_words;
    if (n_window < n_chars && extrapolated_words(n_words, n_chars, n_window, &total_words) < 0) {
        goto done;
    }
    Py_ssize_t newlines = 0;
    if (n_chars) {
        newlines = newline_count(text) + 1;
    }
    int has_system = PyObject_IsTrue(args[4]);
    if (has_system < 0 || log1p_of((double)n_chars, v++) < 0
        || log1p_of(total_words, v++) < 0
        || log1p_of((double)(n_chars / 4 + (n_chars % 4 != 0)), v++) < 0
        || log1p_of((double)newlines, v++) < 0 || log1p_obj(args[2], v++) < 0
        || log1p_obj(args[3], v++) < 0) {
        goto done;
    }
    *v++ = has_system ? 1.0 : 0.0;
    if (log1p_of((double)last_user_chars, v++) < 0) {
        goto done;
    }
    double share = (double)last_user_chars / (double)(n_chars > 1 ? n_chars : 1);
    *v++ = share < 1.0 ? share : 1.0; /* min(1.0, share): 1.0 unless share is smaller */
    /* Regex signals' counts. */
    const Py_ssize_t *cls = scan.w.classes;
    Py_ssize_t counts[N_COUNTS] = {
        scan.w.fences, scan.code,     scan.arithmetic, scan.latex,     scan.urls,
        scan.json,     scan.lines[0], scan.lines[1],   scan.lines[2], scan.w.questions,
    };
    for (int k = 0; k < N_COUNTS; k++) {
        log1p_of((double)counts[k], v++);
    }
    Py_ssize_t letters = cls[C_UPPER] + cls[C_LOWER];
    double per_char = 1.0 / (double)(n_window > 1 ? n_window : 1);
    *v++ = (double)cls[C_DIGIT] * per_char;
    *v++ = (double)cls[C_UPPER] / (double)(letters > 1 ? letters : 1);
    *v++ = (double)cls[C_PUNCT] * per_char;
    if (n_words) {
        log1p_of((double)word_chars / (double)n_words, v++);
    }
    else {
        *v++ = 0.0;
    }
    for (Py_ssize_t g = 0; g < s.n_groups; g++) {
        log1p_of((double)counters[g], v++);
    }
    *v++ = (double)(letters + cls[C_LATIN_EXT]) * per_char;
    *v++ = (double)cls[C_CJK] * per_char;
    *v++ = (double)cls[C_CYRILLIC] * per_char;
    *v++ = (double)cls[C_ARABIC] * per_char;
    *v++ = (double)cls[C_DEVANAGARI] * per_char;
    *v++ = (double)cls[C_OTHER] * per_char;
    Py_ssize_t quantities[N_QUANTITIES] = {
        scan.q.numbers,   scan.q.distinct,  scan.q.longest,  scan.q.sentences,
        scan.w.percents,  scan.q.fractions, scan.q.decimals, scan.w.commas,
    };
    for (int k = 0; k < N_QUANTITIES; k++) {
        log1p_of((double)quantities[k], v++);
    }
    /* Free-form copies: the base block again when there is no multiple-choice option. */
    Py_ssize_t base = v - values;
    if (scan.lines[1] == 0) {
        memcpy(v, values, (size_t)base * sizeof(double));
        v += base;
        *v++ = 1.0;
    }
    else {
        memset(v, 0, (size_t)(base + 1) * sizeof(double));
        v += base + 1;
    }
    Py_ssize_t n_values = v - values;
    if (pad_to >= 0 && n_values > pad_to) {
        PyErr_Format(PyExc_ValueError, "n_dense is %zd, but the prompt has %zd dense values",
                     pad_to, n_values);
        goto done;
    }
    Py_ssize_t size = pad_to >= 0 ? pad_to : n_values;
    PyObject *row = PyByteArray_FromStringAndSize(NULL, size * (Py_ssize_t)sizeof(double));
    if (row == NULL) {
        goto done;
    }
    memcpy(PyByteArray_AS_STRING(row), values, (size_t)n_values * sizeof(double));
    memset(PyByteArray_AS_STRING(row) + n_values * sizeof(double), 0,
           (size_t)(size - n_values) * sizeof(double));
    if (out != NULL) {
        out->lower = Py_NewRef(lower);
        out->spans = spans;
        spans.start = spans.length = NULL;
        spans.slot = NULL;
        out->list = words;
        words = NULL;
        result = row;
    }
    else {
        if (words == NULL) {
            words = words_list(lower, &spans);
        }
        result = words == NULL ? NULL : PyTuple_Pack(2, row, words);
        Py_DECREF(row);
    }
done:
    scans_running--;
    Py_DECREF(window);
    Py_XDECREF(lower);
    Py_XDECREF(words);
    spans_free(&spans);
    return result;
}

PyDoc_STRVAR(feature_row_doc,
"feature_row(text, last_user_chars, turns, images, has_system, max_scan_chars, spec,\n"
"            n, kmax, lo, hi, task_code, n_dense, log_table[, column_weights])\n"
"    -> (dense, cols, values, raw)\n\n"
"dense_signals' values zero-padded to n_dense float64s, then hashed_row of its words, in one\n"
"call: the hot path's whole feature row (features.extractor.PromptFeaturizer.transform_one).");

static PyObject *
feature_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 14 && nargs != 15) {
        PyErr_Format(PyExc_TypeError, "feature_row takes 14 or 15 arguments, got %zd", nargs);
        return NULL;
    }
    Spec s;
    if (parse_spec(args + 6, &s) < 0 /* n … log_table are arguments 7 to 13 */
        || (nargs == 15 && parse_colw(args[14], &s) < 0)) {
        return NULL;
    }
    RowWords w = {NULL, {NULL, NULL, NULL, 0, 0}, NULL};
    PyObject *dense = dense_signals_impl(args, (Py_ssize_t)s.n_dense, &w);
    if (dense == NULL) {
        return NULL;
    }
    PyObject *hashed = NULL, *result = NULL;
    if (w.list != NULL) {
        hashed = hashed_words(&s, w.list);
    }
    else {
        /* The words straight from the lower-cased window: one view per run. */
        WordView *views = PyMem_New(WordView, w.spans.n > 0 ? w.spans.n : 1);
        if (views == NULL) {
            PyErr_NoMemory();
        }
        else {
            int kind = PyUnicode_KIND(w.lower);
            const char *data = PyUnicode_DATA(w.lower);
            int ascii = PyUnicode_IS_ASCII(w.lower);
            for (Py_ssize_t k = 0; k < w.spans.n; k++) {
                views[k].data = data + w.spans.start[k] * kind;
                views[k].length = w.spans.length[k];
                views[k].kind = kind;
                views[k].ascii = ascii; /* else the generic encoder, right for any code point */
            }
            s.words = views;
            s.n_words = w.spans.n;
            hashed = hashed_views(&s);
            PyMem_Free(views);
        }
    }
    if (hashed != NULL) {
        result = PyTuple_Pack(4, dense, PyTuple_GET_ITEM(hashed, 0), PyTuple_GET_ITEM(hashed, 1),
                              PyTuple_GET_ITEM(hashed, 2));
        Py_DECREF(hashed);
    }
    Py_DECREF(dense);
    Py_XDECREF(w.lower);
    Py_XDECREF(w.list);
    spans_free(&w.spans);
    return result;
}

static int
buffer_is(const Py_buffer *b, int ndim, Py_ssize_t itemsize, const char *codes)
{
    if (b->ndim != ndim || b->itemsize != itemsize || b->format == NULL) {
        return 0;
    }
    const char *f = b->format;
    if (*f == '<' || *f == '=' || *f == '@') {
        f++;
    }
    return f[0] != '\0' && f[1] == '\0' && strchr(codes, f[0]) != NULL;
}

/* How many prompt rows ahead the head kernel asks for its weight rows: they are scattered
 * over megabytes, so the cache misses overlap instead of queueing. */
#define GATHER_AHEAD 8

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX_PATH 1
static int cpu_has_avx = 0; /* set at import */

#ifndef HEAD_BLOCK
#define HEAD_BLOCK 2 /* weight rows added per pass over z (2, 4, 8 measured: 2 as fast as any) */
#endif

/* The float32 rows of add_rows with AVX, HEAD_BLOCK rows per pass: each 8-cell block of z stays
 * in two registers while the block's rows are added to it, and the rows after it are
 * prefetched whole. Every cell gets z + x_0 c_0 + x_1 c_1 + ..., a product then a sum per row
 * in row order (no fused multiply-add), exactly as the portable loop computes it. */
__attribute__((target("avx"))) static void
add_float_rows_avx(double *z, const char *weights, Py_ssize_t row_stride, Py_ssize_t width,
                   const char *idx, Py_ssize_t idx_stride, const char *vals,
                   Py_ssize_t val_stride, Py_ssize_t n, int64_t offset)
{
    Py_ssize_t row_bytes = width * (Py_ssize_t)sizeof(float);
    for (Py_ssize_t i = 0; i < n; i += HEAD_BLOCK) {
        const float *c[HEAD_BLOCK];
        double x[HEAD_BLOCK];
        int m = n - i < HEAD_BLOCK ? (int)(n - i) : HEAD_BLOCK;
        for (int j = 0; j < m; j++) {
            int64_t row;
            memcpy(&row, idx + (i + j) * idx_stride, sizeof(row));
            memcpy(&x[j], vals + (i + j) * val_stride, sizeof(double));
            c[j] = (const float *)(weights + (row - offset) * row_stride);
            Py_ssize_t ahead = i + j + GATHER_AHEAD + HEAD_BLOCK;
            if (ahead < n) {
                int64_t later;
                memcpy(&later, idx + ahead * idx_stride, sizeof(later));
                const char *p = weights + (later - offset) * row_stride;
                for (Py_ssize_t b = 0; b < row_bytes; b += 64) {
                    __builtin_prefetch(p + b);
                }
                __builtin_prefetch(p + row_bytes - 1);
            }
        }
        if (m < HEAD_BLOCK) { /* the last rows, one at a time */
            for (int j = 0; j < m; j++) {
                for (Py_ssize_t k = 0; k < width; k++) {
                    z[k] += x[j] * (double)c[j][k];
                }
            }
            return;
        }
        __m256d xv[HEAD_BLOCK];
        for (int j = 0; j < HEAD_BLOCK; j++) {
            xv[j] = _mm256_set1_pd(x[j]);
        }
        Py_ssize_t k = 0;
        for (; k + 8 <= width; k += 8) {
            __m256d lo = _mm256_loadu_pd(z + k), hi = _mm256_loadu_pd(z + k + 4);
            for (int j = 0; j < HEAD_BLOCK; j++) {
                __m256 f = _mm256_loadu_ps(c[j] + k);
                __m256d f_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
                __m256d f_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
                lo = _mm256_add_pd(lo, _mm256_mul_pd(xv[j], f_lo));
                hi = _mm256_add_pd(hi, _mm256_mul_pd(xv[j], f_hi));
            }
            _mm256_storeu_pd(z + k, lo);
            _mm256_storeu_pd(z + k + 4, hi);
        }
        for (; k < width; k++) {
            double t = z[k];
            for (int j = 0; j < HEAD_BLOCK; j++) {
                t += x[j] * (double)c[j][k];
            }
            z[k] = t;
        }
    }
}
#endif

/* ---------------------------------------------------------------------------------------------
 * The head's hashed block fused (models.router.LinearHead.logits_one): z += vals @ rows, the
 * rows read straight from the float32 weights and summed in float64, prompt row by prompt row.
 * No (len(idx), width) float64 matrix is written and read back, as a gather and a BLAS
 * product do; the sum runs in another order than BLAS's, so the logits agree with `take`'s to
 * rounding, not bit for bit.
 */
PyDoc_STRVAR(add_rows_doc,
"add_rows(z, weights, idx, vals, offset[, dense, dense_w]) -> None\n\n"
"z += vals @ weights[idx - offset], in place: z a contiguous float64 vector of\n"
"weights.shape[1] values, weights a float32 matrix, idx an int64 and vals a float64 vector of\n"
"one length. IndexError on a row out of range (z is then unchanged). With `dense` (float64\n"
"vector) and `dense_w` (float64 matrix, one row per dense value, as wide as z), first\n"
"z += dense @ dense_w, skipping the zeros of `dense` (most of a prompt's dense row).");

static PyObject *
add_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5 && nargs != 7) {
        PyErr_Format(PyExc_TypeError, "add_rows takes 5 or 7 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[4]);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer zb, w, r, v;
    if (PyObject_GetBuffer(args[0], &zb, PyBUF_RECORDS) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &w, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&zb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &r, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&zb);
        PyBuffer_Release(&w);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &v, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&zb);
        PyBuffer_Release(&w);
        PyBuffer_Release(&r);
        return NULL;
    }
    PyObject *result = NULL;
    Py_buffer db = {0}, dw = {0};
    if (nargs == 7 && (PyObject_GetBuffer(args[5], &db, PyBUF_RECORDS_RO) < 0 ||
                       PyObject_GetBuffer(args[6], &dw, PyBUF_RECORDS_RO) < 0)) {
        goto done;
    }
    if (!buffer_is(&zb, 1, 8, "d") || zb.strides[0] != 8 || !buffer_is(&w, 2, 4, "f") ||
        !buffer_is(&r, 1, 8, "lq") || !buffer_is(&v, 1, 8, "d") || r.shape[0] != v.shape[0] ||
        zb.shape[0] != w.shape[1]) {
        PyErr_SetString(PyExc_TypeError,
                        "add_rows takes a contiguous float64 vector z, a float32 matrix as wide "
                        "as z, and an int64 and a float64 vector of one length");
        goto done;
    }
    if (nargs == 7 && (!buffer_is(&db, 1, 8, "d") || !buffer_is(&dw, 2, 8, "d") ||
                       dw.shape[0] != db.shape[0] || dw.shape[1] != zb.shape[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "add_rows: dense must be a float64 vector and dense_w a float64 matrix "
                        "with a row per dense value, as wide as z");
        goto done;
    }
    Py_ssize_t n_rows = w.shape[0], width = w.shape[1], n = r.shape[0];
    const char *weights = (const char *)w.buf, *idx = (const char *)r.buf;
    const char *vals = (const char *)v.buf;
    Py_ssize_t row_stride = w.strides[0], col_stride = w.strides[1];
    for (Py_ssize_t i = 0; i < n; i++) { /* every row checked before z changes */
        int64_t row;
        memcpy(&row, idx + i * r.strides[0], sizeof(row));
        row -= (int64_t)offset;
        if (row < 0 || row >= n_rows) {
            PyErr_Format(PyExc_IndexError, "row %lld is out of range for %zd rows",
                         (long long)row, n_rows);
            goto done;
        }
    }
    double *z = (double *)zb.buf;
    if (nargs == 7) {
        Py_ssize_t n_dense = db.shape[0], width = dw.shape[1];
        for (Py_ssize_t j = 0; j < n_dense; j++) {
            double x;
            memcpy(&x, (const char *)db.buf + j * db.strides[0], sizeof(x));
            if (x == 0.0) {
                continue;
            }
            const char *from = (const char *)dw.buf + j * dw.strides[0];
            for (Py_ssize_t k = 0; k < width; k++) {
                double cell;
                memcpy(&cell, from + k * dw.strides[1], sizeof(cell));
                z[k] += x * cell;
            }
        }
    }
    Py_ssize_t i = 0;
#ifdef HAVE_AVX_PATH
    if (col_stride == (Py_ssize_t)sizeof(float) && cpu_has_avx) {
        add_float_rows_avx(z, weights, row_stride, width, idx, r.strides[0], vals, v.strides[0],
                           n, (int64_t)offset);
        i = n;
    }
#endif
    if (i < n && col_stride == (Py_ssize_t)sizeof(float)) {
        /* Two rows per pass: z is read and written half as often. */
        for (; i + 1 < n; i += 2) {
            int64_t r0, r1;
            double x0, x1;
#if defined(__GNUC__) || defined(__clang__)
            for (Py_ssize_t ahead = i + GATHER_AHEAD; ahead < i + GATHER_AHEAD + 2 && ahead < n;
                 ahead++) {
                int64_t later;
                memcpy(&later, idx + ahead * r.strides[0], sizeof(later));
                const char *at = weights + (later - (int64_t)offset) * row_stride;
                __builtin_prefetch(at);
                __builtin_prefetch(at + (width - 1) * col_stride);
            }
#endif
            memcpy(&r0, idx + i * r.strides[0], sizeof(r0));
            memcpy(&r1, idx + (i + 1) * r.strides[0], sizeof(r1));
            memcpy(&x0, vals + i * v.strides[0], sizeof(x0));
            memcpy(&x1, vals + (i + 1) * v.strides[0], sizeof(x1));
            const float *c0 = (const float *)(weights + (r0 - (int64_t)offset) * row_stride);
            const float *c1 = (const float *)(weights + (r1 - (int64_t)offset) * row_stride);
            for (Py_ssize_t k = 0; k < width; k++) {
                double t = z[k] + x0 * (double)c0[k]; /* row by row, as the AVX path sums */
                z[k] = t + x1 * (double)c1[k];
            }
        }
    }
    for (; i < n; i++) {
        int64_t row;
        double x;
#if defined(__GNUC__) || defined(__clang__)
        if (i + GATHER_AHEAD < n) {
            int64_t later;
            memcpy(&later, idx + (i + GATHER_AHEAD) * r.strides[0], sizeof(later));
            const char *at = weights + (later - (int64_t)offset) * row_stride;
            __builtin_prefetch(at);
            __builtin_prefetch(at + (width - 1) * col_stride);
        }
#endif
        memcpy(&row, idx + i * r.strides[0], sizeof(row));
        memcpy(&x, vals + i * v.strides[0], sizeof(x));
        const char *from = weights + (row - (int64_t)offset) * row_stride;
        if (col_stride == (Py_ssize_t)sizeof(float)) {
            const float *cells = (const float *)from;
            for (Py_ssize_t k = 0; k < width; k++) {
                z[k] += x * (double)cells[k];
            }
        }
        else {
            for (Py_ssize_t k = 0; k < width; k++) {
                float cell;
                memcpy(&cell, from + k * col_stride, sizeof(cell));
                z[k] += x * (double)cell;
            }
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&zb);
    PyBuffer_Release(&w);
    PyBuffer_Release(&r);
    PyBuffer_Release(&v);
    if (db.obj != NULL) {
        PyBuffer_Release(&db);
    }
    if (dw.obj != NULL) {
        PyBuffer_Release(&dw);
    }
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * A sigmoid head's scores from its logits, in place (models.router.LinearHead.scores, one row):
 * the numpy form is a dozen calls of about a microsecond each on vectors of a few dozen values.
 * Same formulas, same order of operations as the numpy path, except the two domain mat-vecs,
 * which sum over the domains in index order (BLAS may order them differently: last-bit
 * differences, tested with a tolerance).
 */
PyDoc_STRVAR(head_scores_doc,
"head_scores(z, k, gain_models, gain_ref, num, den) -> None\n\n"
"In place on the float64 vector z = (K score logits, G gain logits, D domain logits):\n"
"sigmoid of the first K + G; score[gain_models[i]] = score[gain_ref[i]] - (2 gain_i - 1);\n"
"softmax of the last D (their probabilities p); with num and den, both C-ordered (D, K)\n"
"float64 matrices (or None when D = 0), score = (score + p @ num) - score * (p @ den).");

static PyObject *
head_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "head_scores takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer zb, gm, gr, nb = {0}, db = {0};
    if (PyObject_GetBuffer(args[0], &zb, PyBUF_RECORDS) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &gm, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&zb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &gr, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&zb);
        PyBuffer_Release(&gm);
        return NULL;
    }
    PyObject *result = NULL;
    int has_domain = args[4] != Py_None;
    if (has_domain) {
        if (PyObject_GetBuffer(args[4], &nb, PyBUF_RECORDS_RO) < 0) {
            goto done;
        }
        if (PyObject_GetBuffer(args[5], &db, PyBUF_RECORDS_RO) < 0) {
            goto done;
        }
    }
    else if (args[5] != Py_None) {
        PyErr_SetString(PyExc_TypeError, "head_scores: num and den are both None or neither");
        goto done;
    }
    if (!buffer_is(&zb, 1, 8, "d") || zb.strides[0] != 8 || !buffer_is(&gm, 1, 8, "lq") ||
        !buffer_is(&gr, 1, 8, "lq") || gm.shape[0] != gr.shape[0]) {
        PyErr_SetString(PyExc_TypeError,
                        "head_scores takes a contiguous float64 vector and two int64 vectors "
                        "of one length");
        goto done;
    }
    Py_ssize_t n = zb.shape[0], g = gm.shape[0];
    if (k < 0 || k > n || g > n - k) {
        PyErr_Format(PyExc_ValueError, "head_scores: %zd scores and %zd gains in %zd logits", k,
                     g, n);
        goto done;
    }
    Py_ssize_t d = n - k - g;
    if (has_domain) {
        if (!buffer_is(&nb, 2, 8, "d") || !buffer_is(&db, 2, 8, "d") ||
            !PyBuffer_IsContiguous(&nb, 'C') || !PyBuffer_IsContiguous(&db, 'C') ||
            nb.shape[0] != d || nb.shape[1] != k || db.shape[0] != d || db.shape[1] != k) {
            PyErr_Format(PyExc_TypeError,
                         "head_scores: num and den must be C-ordered float64 (%zd, %zd)", d, k);
            goto done;
        }
    }
    else if (d != 0) {
        PyErr_Format(PyExc_ValueError, "head_scores: %zd domain logits without num and den", d);
        goto done;
    }
    const char *gmp = (const char *)gm.buf, *grp = (const char *)gr.buf;
    for (Py_ssize_t i = 0; i < g; i++) {
        int64_t m, r;
        memcpy(&m, gmp + i * gm.strides[0], sizeof(m));
        memcpy(&r, grp + i * gr.strides[0], sizeof(r));
        if (m < 0 || m >= k || r < 0 || r >= k) {
            PyErr_Format(PyExc_IndexError,
                         "head_scores: gain model %lld or reference %lld is not below %zd",
                         (long long)m, (long long)r, k);
            goto done;
        }
    }
    double *z = (double *)zb.buf;
    for (Py_ssize_t i = 0; i < k + g; i++) {
        z[i] = 1.0 / (1.0 + exp(-z[i]));
    }
    /* Every reference is read before any score is replaced, as numpy's fancy indexing does. */
    for (Py_ssize_t i = 0; i < g; i++) {
        int64_t r;
        memcpy(&r, grp + i * gr.strides[0], sizeof(r));
        double gain = z[k + i] * 2.0 - 1.0;
        z[k + i] = z[r] - gain;
    }
    for (Py_ssize_t i = 0; i < g; i++) {
        int64_t m;
        memcpy(&m, gmp + i * gm.strides[0], sizeof(m));
        z[m] = z[k + i];
    }
    if (d > 0) {
        double *p = z + k + g, top = p[0], total = 0.0;
        for (Py_ssize_t j = 1; j < d; j++) {
            if (p[j] > top || isnan(p[j])) {
                top = p[j];
            }
        }
        for (Py_ssize_t j = 0; j < d; j++) {
            p[j] = exp(p[j] - top);
        }
        for (Py_ssize_t j = 0; j < d; j++) {
            total += p[j];
        }
        for (Py_ssize_t j = 0; j < d; j++) {
            p[j] /= total;
        }
        const double *num = (const double *)nb.buf, *den = (const double *)db.buf;
        for (Py_ssize_t m = 0; m < k; m++) {
            double a = 0.0, b = 0.0;
            for (Py_ssize_t j = 0; j < d; j++) {
                a += p[j] * num[j * k + m];
                b += p[j] * den[j * k + m];
            }
            z[m] = (z[m] + a) - z[m] * b;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&zb);
    PyBuffer_Release(&gm);
    PyBuffer_Release(&gr);
    if (nb.obj != NULL) {
        PyBuffer_Release(&nb);
    }
    if (db.obj != NULL) {
        PyBuffer_Release(&db);
    }
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * Scores as the /route answer shows them (models.router.rounded): numpy's round(x, d) and
 * tolist() are two calls and ~1.6 µs for a few dozen values. numpy rounds by multiplying by
 * 10^d, rounding half to even (rint) and dividing by 10^d, each an IEEE operation on doubles;
 * this does the same three, so the values are numpy's bit for bit.
 */
PyDoc_STRVAR(round_list_doc,
"round_list(values, decimals) -> list of float\n\n"
"numpy.round(values, decimals).tolist() for a float64 vector and 0 <= decimals <= 8.");

static PyObject *
round_list(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    static const double p10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "round_list takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    long decimals = PyLong_AsLong(args[1]);
    if (decimals == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (decimals < 0 || decimals > 8) {
        PyErr_SetString(PyExc_ValueError, "round_list: decimals must be 0 to 8");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    PyObject *out = NULL;
    if (!buffer_is(&b, 1, 8, "d")) {
        PyErr_SetString(PyExc_TypeError, "round_list takes a float64 vector");
        goto done;
    }
    double f = p10[decimals];
    out = PyList_New(b.shape[0]);
    for (Py_ssize_t i = 0; out != NULL && i < b.shape[0]; i++) {
        double x;
        memcpy(&x, (const char *)b.buf + i * b.strides[0], sizeof(x));
        volatile double scaled = x * f; /* rounded on its own, as numpy's multiply */
        PyObject *v = PyFloat_FromDouble(nearbyint(scaled) / f);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
done:
    PyBuffer_Release(&b);
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * The router's order of its models (models.router.Router.rank): numpy's lexsort of a few dozen
 * values, a mask and a fancy index cost ~4 µs of every decision; this is the same order by an
 * insertion sort. Keys as numpy forms them: cost * scale, then minus the score, each rounded
 * (a fused multiply-add would round once and could order ties differently, hence the volatile).
 */
PyDoc_STRVAR(rank_order_doc,
"rank_order(out, score, cost, scale, mask) -> int\n\n"
"Models in ascending order of key = cost * scale - score (-score when scale is None), ties by\n"
"ascending cost, then by index, NaN keys after every number: numpy's\n"
"lexsort((cost, key)). The indices mask keeps (every one when mask is None) go to the\n"
"start of the int64 vector out; returns how many. score, cost and out are float64, float64\n"
"and int64 vectors of one length, at most 1024; mask a bool vector of that length.");

#define RANK_MAX 1024

/* -1, 0, 1 as numpy's sort orders a and b: NaN after every number, NaNs equal. */
static int
order_of(double a, double b)
{
    int na = isnan(a), nb = isnan(b);
    if (na || nb) {
        return na - nb;
    }
    return (a > b) - (a < b);
}

static PyObject *
rank_order(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "rank_order takes 5 arguments, got %zd", nargs);
        return NULL;
    }
    double scale = 0.0;
    int scaled = args[3] != Py_None;
    if (scaled) {
        scale = PyFloat_AsDouble(args[3]);
        if (scale == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer ob, sb, cb, mb = {0};
    if (PyObject_GetBuffer(args[0], &ob, PyBUF_RECORDS) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &sb, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&ob);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &cb, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&ob);
        PyBuffer_Release(&sb);
        return NULL;
    }
    PyObject *result = NULL;
    int masked = args[4] != Py_None;
    if (masked && PyObject_GetBuffer(args[4], &mb, PyBUF_RECORDS_RO) < 0) {
        goto done;
    }
    Py_ssize_t n = sb.ndim == 1 ? sb.shape[0] : -1;
    if (!buffer_is(&ob, 1, 8, "lq") || !buffer_is(&sb, 1, 8, "d") || !buffer_is(&cb, 1, 8, "d") ||
        ob.shape[0] != n || cb.shape[0] != n ||
        (masked && (!buffer_is(&mb, 1, 1, "?") || mb.shape[0] != n))) {
        PyErr_SetString(PyExc_TypeError,
                        "rank_order takes an int64, a float64 and a float64 vector of one length "
                        "and a bool vector of that length or None");
        goto done;
    }
    if (n > RANK_MAX) {
        PyErr_Format(PyExc_ValueError, "rank_order: %zd models, at most %d", n, RANK_MAX);
        goto done;
    }
    double key[RANK_MAX], cost[RANK_MAX];
    int64_t order[RANK_MAX];
    const char *sp = (const char *)sb.buf, *cp = (const char *)cb.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        double q, c;
        memcpy(&q, sp + i * sb.strides[0], sizeof(q));
        memcpy(&c, cp + i * cb.strides[0], sizeof(c));
        if (scaled) {
            volatile double product = c * scale;
            key[i] = product - q;
        }
        else {
            key[i] = -q;
        }
        cost[i] = c;
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (masked && !((const char *)mb.buf)[i * mb.strides[0]]) {
            continue;
        }
        /* Insertion after every element that is not greater: equal keys keep index order. */
        Py_ssize_t at = kept;
        while (at > 0) {
            int64_t j = order[at - 1];
            int by = order_of(key[j], key[i]);
            if (by < 0 || (by == 0 && order_of(cost[j], cost[i]) <= 0)) {
                break;
            }
            order[at] = j;
            at--;
        }
        order[at] = (int64_t)i;
        kept++;
    }
    char *op = (char *)ob.buf;
    for (Py_ssize_t i = 0; i < kept; i++) {
        memcpy(op + i * ob.strides[0], &order[i], sizeof(int64_t));
    }
    result = PyLong_FromSsize_t(kept);
done:
    PyBuffer_Release(&ob);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&cb);
    if (mb.obj != NULL) {
        PyBuffer_Release(&mb);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"hashed_row", (PyCFunction)(void (*)(void))hashed_row, METH_FASTCALL, hashed_row_doc},
    {"char_classes", char_classes, METH_O, char_classes_doc},
    {"quantities", (PyCFunction)(void (*)(void))quantities, METH_FASTCALL, quantities_doc},
    {"keyword_counts", (PyCFunction)(void (*)(void))keyword_counts, METH_FASTCALL,
     keyword_counts_doc},
    {"dense_signals", (PyCFunction)(void (*)(void))dense_signals_c, METH_FASTCALL,
     dense_signals_doc},
    {"add_rows", (PyCFunction)(void (*)(void))add_rows, METH_FASTCALL, add_rows_doc},
    {"head_scores", (PyCFunction)(void (*)(void))head_scores, METH_FASTCALL, head_scores_doc},
    {"rank_order", (PyCFunction)(void (*)(void))rank_order, METH_FASTCALL, rank_order_doc},
    {"round_list", (PyCFunction)(void (*)(void))round_list, METH_FASTCALL, round_list_doc},
    {"feature_row", (PyCFunction)(void (*)(void))feature_row, METH_FASTCALL, feature_row_doc},
    {"has_surrogates", has_surrogates, METH_O, has_surrogates_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "features._compiled",
    .m_doc = "Compiled hashed n-grams for features.extractor (see _hashed_python) and three\n"
             "counting steps of features.signals (see its _*_python functions).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__compiled(void)
{
#ifdef HAVE_AVX_PATH
    __builtin_cpu_init();
    /* PROMPTROUTE_COMPILED_AVX=0 keeps the portable loops (tests check both give one result). */
    const char *avx_env = getenv("PROMPTROUTE_COMPILED_AVX");
    cpu_has_avx = __builtin_cpu_supports("avx") && !(avx_env != NULL && strcmp(avx_env, "0") == 0);
#endif
    crc_init();
    signals_init();
    word_seed = crc32_update(0, (const unsigned char *)"w:", 2);
    char_seed = crc32_update(0, (const unsigned char *)"c:", 2);
    PyObject **interned[] = {&str_findall, &str_match,   &str_lower,      &str_groups,
                             &str_newline, &str_scheme,  &str_www,        &str_scheme_www};
    const char *names[] = {"findall", "match", "lower", "groups", "\n", "://", "www.", "://www."};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (*interned[k] == NULL && (*interned[k] = PyUnicode_InternFromString(names[k])) == NULL) {
            return NULL;
        }
    }
    for (int k = 0; k < N_MARKER_WORDS; k++) {
        if (marker_strs[k] == NULL
            && (marker_strs[k] = PyUnicode_InternFromString(marker_words[k])) == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
