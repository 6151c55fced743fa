/* The hashed n-gram block of a feature row, in one call: the compiled twin of
 * `features.extractor._hashed_python`, which stays the reference (and the fallback when this
 * module is not built). Everything here must give exactly the reference's row: the same columns
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

static PyMethodDef methods[] = {
    {"hashed_row", (PyCFunction)(void (*)(void))hashed_row, METH_FASTCALL, hashed_row_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "features._hashing",
    .m_doc = "Compiled hashed n-grams for features.extractor (see _hashed_python).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__hashing(void)
{
    crc_init();
    word_seed = crc32_update(0, (const unsigned char *)"w:", 2);
    char_seed = crc32_update(0, (const unsigned char *)"c:", 2);
    return PyModule_Create(&module_def);
}
