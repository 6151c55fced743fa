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
#include <string.h>

#define MAX_HASH_FEATURES (1 << 24)
#define MAX_NGRAM 8
#define LOW_31 0x7FFFFFFFu
#define MIX_A 0x9E3779B97F4A7C15ull
#define MIX_B 0xC2B2AE3D27D4EB4Full
#define TOKENS_MAX (PY_SSIZE_T_MAX / 16)

/* Slicing-by-8 tables: crc_table[j][b] is the CRC register after byte b and j zero bytes, so
 * up to 8 bytes cost independent lookups instead of a chain of dependent ones (n-grams are a
 * few bytes each, and the chain's latency is most of their cost). */
static uint32_t crc_table[8][256];
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

/* zlib.crc32(data[:size], seed). */
static uint32_t
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

/* Writes " word " as UTF-8 with lone surrogates as their 3-byte form (Python's
 * "surrogatepass"), which is simply the generic encoding of the code point. */
static void
pad_word(PyObject *word, Padded *out)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(word);
    int kind = PyUnicode_KIND(word);
    const void *data = PyUnicode_DATA(word);
    unsigned char *b = out->bytes;
    Py_ssize_t pos = 0;
    out->offsets[0] = 0;
    b[pos++] = ' ';
    if (PyUnicode_IS_ASCII(word)) { /* most words: the bytes are the code points */
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
    size_t mask;
    int shift; /* 64 - log2(capacity): a Fibonacci hash keeps the product's top bits */
    int64_t *cols;
    int64_t *sums;
    Py_ssize_t size;
} ColumnMap;

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
    m->entries = PyMem_Calloc(capacity, sizeof(uint64_t));
    m->cols = PyMem_New(int64_t, distinct_max);
    m->sums = PyMem_New(int64_t, distinct_max);
    if (m->entries == NULL || m->cols == NULL || m->sums == NULL) {
        return -1;
    }
    return 0;
}

static void
map_free(ColumnMap *m)
{
    PyMem_Free(m->entries);
    PyMem_Free(m->cols);
    PyMem_Free(m->sums);
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
    PyObject *words; /* a list or tuple of str */
    int64_t n;
    int kmax, lo, hi;
    int has_task;
    int64_t task_code;
    int64_t n_dense;
    const double *log_table; /* log_table[k] == np.log(k) for 1 <= k < log_size */
    Py_ssize_t log_size;
} Spec;

/* Every hashed token occurrence as a code, in the reference's order: per word its unigram and
 * char n-grams, then word 2- to kmax-grams by size then position, then the task type. */
static int64_t *
token_codes(const Spec *s, Py_ssize_t *total_out)
{
    Py_ssize_t n_words = PySequence_Fast_GET_SIZE(s->words);
    PyObject **items = PySequence_Fast_ITEMS(s->words);
    Py_ssize_t total = s->has_task, longest = 0;
    for (Py_ssize_t j = 0; j < n_words; j++) {
        if (!PyUnicode_Check(items[j])) {
            PyErr_Format(PyExc_TypeError, "words[%zd] must be a str", j);
            return NULL;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(items[j]) < 0) {
            return NULL;
        }
#endif
        Py_ssize_t length = PyUnicode_GET_LENGTH(items[j]);
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
    int64_t *codes = PyMem_New(int64_t, total > 0 ? total : 1);
    uint32_t *hashes = PyMem_New(uint32_t, n_words > 0 ? n_words : 1);
    Padded w = {PyMem_Malloc(4 * longest + 2), PyMem_New(Py_ssize_t, longest + 3)};
    if (codes == NULL || hashes == NULL || w.bytes == NULL || w.offsets == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Columns columns = columns_of(s->n);
    Py_ssize_t head = 0;
    for (Py_ssize_t j = 0; j < n_words; j++) {
        Py_ssize_t p = PyUnicode_GET_LENGTH(items[j]) + 2;
        pad_word(items[j], &w);
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
    PyMem_Free(codes);
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

/* The row as (cols, values, raw): int64 and float64 bytearrays. Values are the sublinear tf
 * sign(v) * (1 + ln|v|) of the non-zero counts, unless some |v| is past the log table: then
 * `raw` is True and values are the signed counts themselves, for the caller to finish. */
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
        }
        out++;
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
    return 0;
}

PyDoc_STRVAR(hashed_row_doc,
"hashed_row(words, n, kmax, lo, hi, task_code, n_dense, log_table) -> (cols, values, raw)\n\n"
"The hashed block of a feature row, exactly as features.extractor._hashed_python computes\n"
"it before L2 normalisation: `cols` (int64, offset by n_dense) and `values` (float64) as\n"
"bytearrays in the reference's order. `log_table` holds np.log(k) for k = 0..K-1 as float64\n"
"bytes; when some count reaches K, `raw` is True and values are the signed counts.");

static PyObject *
hashed_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "hashed_row takes 8 arguments, got %zd", nargs);
        return NULL;
    }
    Spec s;
    if (parse_spec(args, &s) < 0) {
        return NULL;
    }
    if (!PyList_Check(args[0]) && !PyTuple_Check(args[0])) { /* a str is not its characters */
        PyErr_SetString(PyExc_TypeError, "words must be a list of str");
        return NULL;
    }
    s.words = PySequence_Fast(args[0], "words must be a list of str");
    if (s.words == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t total = 0;
    int64_t *codes = token_codes(&s, &total);
    if (codes != NULL) {
        ColumnMap m = {NULL, 0, 0, NULL, NULL, 0};
        if (merge_columns(codes, total, s.n, &m) == 0) {
            result = build_row(&s, &m);
        }
        map_free(&m);
        PyMem_Free(codes);
    }
    Py_DECREF(s.words);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * Dense signals: compiled twins of three counting steps of features.signals.dense_signals. The
 * Python versions (`_class_counts_python`, `_quantities_python`, `_keyword_counts_python`) stay
 * the reference and the fallback; these must give exactly their counts for any input. Code
 * points are read straight from the str, with the character tests of Python's `re` for str
 * patterns: `\d` is Py_UNICODE_ISDECIMAL, `\s` is Py_UNICODE_ISSPACE.
 */

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

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

/* Whether words[start : start + len(tokens)] == tokens, as Python's list comparison decides. */
static int
phrase_at(PyObject *words, Py_ssize_t start, PyObject *tokens)
{
    Py_ssize_t size = PyList_GET_SIZE(tokens);
    if (start < 0 || start > PyList_GET_SIZE(words) - size) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < size; k++) {
        PyObject *word = PyList_GET_ITEM(words, start + k), *token = PyList_GET_ITEM(tokens, k);
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
count_entry(PyObject *words, Py_ssize_t i, PyObject *entry, Py_ssize_t n_counters,
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
        int status = count_entry(words, i, entry, n_counters, counts);
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

static PyMethodDef methods[] = {
    {"hashed_row", (PyCFunction)(void (*)(void))hashed_row, METH_FASTCALL, hashed_row_doc},
    {"char_classes", char_classes, METH_O, char_classes_doc},
    {"quantities", (PyCFunction)(void (*)(void))quantities, METH_FASTCALL, quantities_doc},
    {"keyword_counts", (PyCFunction)(void (*)(void))keyword_counts, METH_FASTCALL,
     keyword_counts_doc},
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
    crc_init();
    signals_init();
    word_seed = crc32_update(0, (const unsigned char *)"w:", 2);
    char_seed = crc32_update(0, (const unsigned char *)"c:", 2);
    return PyModule_Create(&module_def);
}
