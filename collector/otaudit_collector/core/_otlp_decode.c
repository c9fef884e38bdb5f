/*
 * otaudit_collector.core._otlp_decode: the bytes of an OTLP/protobuf
 * ExportLogsServiceRequest straight to plain Python objects (see otlp_model.py):
 *
 *   decode_logs_request(data, max_depth, max_records=-1) -> [(resource_bytes, resource_attributes, scopes), ...]
 *   scopes = [[record | reason_str, ...], ...]
 *   record = (raw, time_unix_nano, observed_time_unix_nano, event_name, trace_id, span_id,
 *             body, attributes, dropped_attributes_count, flags)
 *
 * THE FORMAT. A protobuf message is a sequence of fields; each is a tag varint
 * (field number << 3 | wire type) and a value: wire type 0 a varint, 1 eight bytes,
 * 2 a length varint and that many bytes (strings, bytes, submessages), 5 four bytes,
 * 3 and 4 the start and end of a group. The messages read here (opentelemetry-proto, as
 * in its Python package 1.45):
 *
 *   ExportLogsServiceRequest  1 resource_logs*
 *   ResourceLogs              1 resource (Resource), 2 scope_logs*, 3 schema_url
 *   Resource                  1 attributes* (KeyValue), 2 dropped_attributes_count,
 *                             3 entity_refs* (EntityRef: 1 schema_url, 2 type, 3 id_keys*,
 *                             4 description_keys*; strings only, validated, not returned)
 *   ScopeLogs                 1 scope (InstrumentationScope), 2 log_records*, 3 schema_url
 *   InstrumentationScope      1 name, 2 version, 3 attributes*, 4 dropped_attributes_count
 *   LogRecord                 1 time_unix_nano (fixed64), 2 severity_number, 3 severity_text,
 *                             5 body (AnyValue), 6 attributes*, 7 dropped_attributes_count,
 *                             8 flags (fixed32), 9 trace_id, 10 span_id,
 *                             11 observed_time_unix_nano (fixed64), 12 event_name
 *   KeyValue                  1 key, 2 value (AnyValue), 3 key_strindex (int32, ignored)
 *   AnyValue (oneof)          1 string, 2 bool, 3 int64, 4 double, 5 array_value (ArrayValue),
 *                             6 kvlist_value (KeyValueList), 7 bytes, 8 string_value_strindex
 *                             (int32: a profiles string-table index; returned as an int,
 *                             like the protobuf runtime's WhichOneof/getattr would)
 *   ArrayValue / KeyValueList 1 values* (AnyValue / KeyValue)
 *
 * Acceptance follows upb, the protobuf runtime, field by field: a known field sent with
 * another wire type than its own is an unknown field; unknown fields are skipped, groups
 * among them up to their matching end tag; tags and lengths are at most 5 bytes (tags
 * < 2^32, lengths < 2^31 - 1), other varints at most 10 bytes (excess bits dropped);
 * field number 0 (except inside a group), wire types 6 and 7 and an end-group tag that
 * does not close the group it is in are malformed; every string field must be strict
 * UTF-8, also the ones not returned. A message field given several times is merged: an
 * AnyValue's array or kvlist given again extends the one before, another oneof member
 * replaces it; scalar fields: the last one wins.
 *
 * Depth: an attribute's value (or the body) is at depth 0, what a list or dict holds one
 * deeper; a list or dict at depth >= max_depth makes the value too deep (unless a later
 * oneof member replaced it, as upb's WhichOneof would not see it).
 *
 * A LogRecord that cannot be decoded becomes a str naming the reason and the next
 * record is read (its length is known from ScopeLogs). A broken request, ResourceLogs,
 * ScopeLogs, Resource or scope raises ValueError naming where (resource attributes
 * too deep included). More than max_records LogRecords (when it is not negative) raises
 * OverflowError as soon as the one over the limit is met: a request of millions of tiny
 * records is refused before it is turned into millions of objects.
 *
 * SAFETY RULES. Input is untrusted.
 *  - Every read goes through a Buf whose end is the end of the enclosing field, checked
 *    before each byte is read; lengths are checked against what remains before use.
 *  - Recursion is bounded: values nest at most VALUE_DEPTH_CAP levels (max_depth may not
 *    exceed it), unknown groups at most GROUP_DEPTH_CAP levels. Work is linear in the
 *    input (repeated resource bytes are joined in an over-allocating bytearray).
 *  - Each function owns what it creates and releases it on every error path; the only
 *    exception state left behind is a real Python error (E_PY, e.g. MemoryError).
 *  - Only built-in types are created, so no Python code runs while the buffer is held.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VALUE_DEPTH_CAP 128
#define GROUP_DEPTH_CAP 100

enum { OK = 0, E_BAD, E_UTF8, E_DEPTH, E_PY };
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };
#define TAG(num, wt) ((uint32_t)(num) << 3 | (uint32_t)(wt))

typedef struct { const uint8_t *p, *end; } Buf;
typedef struct { uint32_t num; int wt; uint64_t u; const uint8_t *data; Py_ssize_t len; } Field;
/* records: LogRecords met so far (counted through the pointer: Ctx is passed const). */
typedef struct { int max_depth; Py_ssize_t max_records; Py_ssize_t *records; } Ctx;
/* An AnyValue being decoded: kind is the oneof field number set last (0: none), obj its
 * value (owned), deep whether it holds a list or dict nested max_depth levels or more. */
typedef struct { int kind; int deep; PyObject *obj; } Val;

/* -- wire level ------------------------------------------------------------------- */

static int read_varint_long(Buf *b, uint64_t *out, int maxlen)
{
    uint64_t v = 0;
    for (int i = 0; i < maxlen; i++) { /* maxlen <= 10, so the shift is at most 63 */
        if (b->p >= b->end) return E_BAD;
        uint8_t byte = *b->p++;
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) { *out = v; return OK; }
    }
    return E_BAD;
}

static inline int read_varint(Buf *b, uint64_t *out, int maxlen)
{
    if (b->p < b->end && *b->p < 0x80) { /* one byte: most tags and lengths */
        *out = *b->p++;
        return OK;
    }
    return read_varint_long(b, out, maxlen);
}

static inline int read_fixed(Buf *b, int width, uint64_t *out)
{
    if (b->end - b->p < width) return E_BAD;
    uint64_t v = 0;
    for (int i = width - 1; i >= 0; i--) v = v << 8 | b->p[i]; /* little endian */
    b->p += width;
    *out = v;
    return OK;
}

static inline int read_tag(Buf *b, uint32_t *num, int *wt)
{
    uint64_t tag;
    if (read_varint(b, &tag, 5) || tag > UINT32_MAX) return E_BAD;
    *num = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    return OK;
}

static inline int read_value(Buf *b, uint32_t num, int wt, Field *f, int gdepth);

/* Skip an unknown group's fields up to its end tag (the start tag has been read). */
static int skip_group(Buf *b, uint32_t num, int gdepth)  /* not inline: it recurses */
{
    if (gdepth >= GROUP_DEPTH_CAP) return E_BAD;
    for (;;) {
        uint32_t inner;
        int wt, r;
        Field g;
        if (read_tag(b, &inner, &wt)) return E_BAD; /* also: the group never ends */
        if (wt == WT_EGROUP) return inner == num ? OK : E_BAD;
        if ((r = read_value(b, inner, wt, &g, gdepth + 1))) return r;
    }
}

/* Read the value of a field whose tag has been read: f->u for the numeric wire
 * types, f->data / f->len for length-delimited ones; groups are skipped. */
static inline int read_value(Buf *b, uint32_t num, int wt, Field *f, int gdepth)
{
    uint64_t n;
    f->num = num;
    f->wt = wt;
    switch (wt) {
    case WT_VARINT: return read_varint(b, &f->u, 10);
    case WT_I64: return read_fixed(b, 8, &f->u);
    case WT_I32: return read_fixed(b, 4, &f->u);
    case WT_LEN:
        if (read_varint(b, &n, 5) || n >= INT32_MAX || n > (uint64_t)(b->end - b->p)) return E_BAD;
        f->data = b->p;
        f->len = (Py_ssize_t)n;
        b->p += n;
        return OK;
    case WT_SGROUP: return skip_group(b, num, gdepth);
    default: return E_BAD; /* an end-group tag outside its group, or wire type 6 / 7 */
    }
}

/* The next field of a message (field number 0 is malformed here, not inside groups). */
static inline int next_field(Buf *b, Field *f)
{
    uint32_t num;
    int wt;
    if (read_tag(b, &num, &wt) || num == 0) return E_BAD;
    return read_value(b, num, wt, f, 0);
}

/* -- values ------------------------------------------------------------------------ */

static int make_str(const uint8_t *p, Py_ssize_t n, PyObject **out)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return E_PY;
        PyErr_Clear();
        return E_UTF8;
    }
    *out = s;
    return OK;
}

static int check_utf8(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    PyObject *s;
    while (i < n && p[i] < 0x80) i++;
    if (i == n) return OK;
    int r = make_str(p + i, n - i, &s); /* an ASCII prefix ends on a character boundary */
    if (r == OK) Py_DECREF(s);
    return r;
}

static int set_bytes(PyObject **slot, const uint8_t *p, Py_ssize_t n)
{
    PyObject *o = PyBytes_FromStringAndSize((const char *)p, n), *old = *slot;
    if (o == NULL) return E_PY;
    *slot = o;
    Py_XDECREF(old);
    return OK;
}

static void val_set(Val *v, int kind, PyObject *obj)
{
    PyObject *old = v->obj;
    v->kind = kind;
    v->deep = 0;
    v->obj = obj;
    Py_XDECREF(old);
}

/* two's complement without implementation-defined casts */
static int64_t as_int64(uint64_t u) { return u <= INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1; }
static int32_t as_int32(uint64_t u)
{
    uint32_t x = (uint32_t)u; /* an int32 varint: its low 32 bits */
    return x <= INT32_MAX ? (int32_t)x : -(int32_t)(~x) - 1;
}

static int any_value(const Ctx *c, Val *v, const uint8_t *p, Py_ssize_t n, int depth);

/* One KeyValue: *key (new reference) and *val (caller owns val->obj) on success;
 * nothing left to release on error. */
static int key_value(const Ctx *c, const uint8_t *p, Py_ssize_t n, int depth, PyObject **key, Val *val)
{
    Buf b = {p, p + n};
    Field f;
    PyObject *k = NULL, *s;
    int r = OK;
    val->kind = val->deep = 0;
    val->obj = NULL;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) break;
        if (f.wt != WT_LEN) continue;
        if (f.num == 1) {
            if ((r = make_str(f.data, f.len, &s))) break;
            Py_XDECREF(k);
            k = s;
        } else if (f.num == 2) {
            if ((r = any_value(c, val, f.data, f.len, depth))) break; /* merges, like upb */
        }
    }
    if (r == OK && k == NULL && (k = PyUnicode_FromString("")) == NULL) r = E_PY;
    if (r) {
        Py_XDECREF(k);
        Py_CLEAR(val->obj);
        return r;
    }
    *key = k;
    return OK;
}

/* An ArrayValue (kind 5) or KeyValueList (kind 6) at `depth`, appended to v's list /
 * dict if v already holds that kind (protobuf merge), else replacing v's value. */
static int container(const Ctx *c, Val *v, int kind, const uint8_t *p, Py_ssize_t n, int depth)
{
    Buf b = {p, p + n};
    Field f;
    int r;
    if (depth >= VALUE_DEPTH_CAP) return E_DEPTH;
    if (v->kind != kind) {
        PyObject *o = kind == 5 ? PyList_New(0) : PyDict_New();
        if (o == NULL) return E_PY;
        val_set(v, kind, o);
    }
    if (depth >= c->max_depth) v->deep = 1;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) return r;
        if (f.num != 1 || f.wt != WT_LEN) continue;
        if (kind == 5) {
            Val item = {0, 0, NULL};
            if ((r = any_value(c, &item, f.data, f.len, depth + 1))) {
                Py_XDECREF(item.obj);
                return r;
            }
            v->deep |= item.deep;
            PyObject *o = item.obj ? item.obj : Py_NewRef(Py_None);
            r = PyList_Append(v->obj, o);
            Py_DECREF(o);
        } else {
            PyObject *k;
            Val item;
            if ((r = key_value(c, f.data, f.len, depth + 1, &k, &item))) return r;
            v->deep |= item.deep; /* a later duplicate key does not hide it (as in Python) */
            r = PyDict_SetItem(v->obj, k, item.obj ? item.obj : Py_None);
            Py_DECREF(k);
            Py_XDECREF(item.obj);
        }
        if (r < 0) return E_PY;
    }
    return OK;
}

/* Decode an AnyValue into v (merging into what v holds); on error v->obj stays the
 * caller's to release. */
static int any_value(const Ctx *c, Val *v, const uint8_t *p, Py_ssize_t n, int depth)
{
    Buf b = {p, p + n};
    Field f;
    PyObject *o;
    int r;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) return r;
        switch (TAG(f.num, f.wt)) {
        case TAG(1, WT_LEN):
            if ((r = make_str(f.data, f.len, &o))) return r;
            val_set(v, 1, o);
            break;
        case TAG(2, WT_VARINT):
            val_set(v, 2, Py_NewRef(f.u ? Py_True : Py_False));
            break;
        case TAG(3, WT_VARINT):
            if ((o = PyLong_FromLongLong(as_int64(f.u))) == NULL) return E_PY;
            val_set(v, 3, o);
            break;
        case TAG(4, WT_I64): {
            double d;
            memcpy(&d, &f.u, sizeof d);
            if ((o = PyFloat_FromDouble(d)) == NULL) return E_PY;
            val_set(v, 4, o);
            break;
        }
        case TAG(5, WT_LEN):
        case TAG(6, WT_LEN):
            if ((r = container(c, v, (int)f.num, f.data, f.len, depth))) return r;
            break;
        case TAG(7, WT_LEN):
            if ((o = PyBytes_FromStringAndSize((const char *)f.data, f.len)) == NULL) return E_PY;
            val_set(v, 7, o);
            break;
        case TAG(8, WT_VARINT):
            if ((o = PyLong_FromLong(as_int32(f.u))) == NULL) return E_PY;
            val_set(v, 8, o);
            break;
        default: break; /* an unknown field, or a known one with another wire type */
        }
    }
    return OK;
}

/* Append one KeyValue to `list` as a (key, value) tuple. */
static int attribute(const Ctx *c, PyObject *list, const uint8_t *p, Py_ssize_t n, int *deep)
{
    PyObject *k, *pair;
    Val v;
    int r = key_value(c, p, n, 0, &k, &v);
    if (r) return r;
    *deep |= v.deep;
    if ((pair = PyTuple_New(2)) == NULL) {
        Py_DECREF(k);
        Py_XDECREF(v.obj);
        return E_PY;
    }
    PyTuple_SET_ITEM(pair, 0, k);
    PyTuple_SET_ITEM(pair, 1, v.obj ? v.obj : Py_NewRef(Py_None));
    r = PyList_Append(list, pair);
    Py_DECREF(pair);
    return r < 0 ? E_PY : OK;
}

/* -- messages ---------------------------------------------------------------------- */

static int log_record(const Ctx *c, const uint8_t *p, Py_ssize_t n, PyObject **out)
{
    Buf b = {p, p + n};
    Field f;
    uint64_t time = 0, observed = 0, dropped = 0, flags = 0;
    PyObject *event = NULL, *trace = NULL, *span = NULL, *attrs = PyList_New(0), *s;
    Val body = {0, 0, NULL};
    int r = OK, deep = 0;
    if (attrs == NULL) return E_PY;
    while (r == OK && b.p < b.end) {
        if ((r = next_field(&b, &f))) break;
        switch (TAG(f.num, f.wt)) {
        case TAG(1, WT_I64): time = f.u; break;
        case TAG(11, WT_I64): observed = f.u; break;
        case TAG(3, WT_LEN): r = check_utf8(f.data, f.len); break;
        case TAG(5, WT_LEN): r = any_value(c, &body, f.data, f.len, 0); break;
        case TAG(6, WT_LEN): r = attribute(c, attrs, f.data, f.len, &deep); break;
        case TAG(7, WT_VARINT): dropped = (uint32_t)f.u; break;
        case TAG(8, WT_I32): flags = f.u; break;
        case TAG(9, WT_LEN): r = set_bytes(&trace, f.data, f.len); break;
        case TAG(10, WT_LEN): r = set_bytes(&span, f.data, f.len); break;
        case TAG(12, WT_LEN):
            if ((r = make_str(f.data, f.len, &s)) == OK) {
                Py_XDECREF(event);
                event = s;
            }
            break;
        default: break; /* severity_number, unknown fields */
        }
    }
    if (r == OK && (deep || body.deep)) r = E_DEPTH;
    if (r == OK) {
        PyObject *items[10] = {
            PyBytes_FromStringAndSize((const char *)p, n),
            PyLong_FromUnsignedLongLong(time),
            PyLong_FromUnsignedLongLong(observed),
            event ? event : PyUnicode_FromString(""),
            trace ? trace : PyBytes_FromStringAndSize("", 0),
            span ? span : PyBytes_FromStringAndSize("", 0),
            body.obj ? body.obj : Py_NewRef(Py_None),
            attrs,
            PyLong_FromUnsignedLongLong(dropped),
            PyLong_FromUnsignedLongLong(flags),
        };
        PyObject *tuple = NULL;
        event = trace = span = attrs = body.obj = NULL; /* now owned by items */
        int i, complete = 1;
        for (i = 0; i < 10; i++) complete &= items[i] != NULL;
        if (complete) tuple = PyTuple_New(10);
        for (i = 0; i < 10; i++) {
            if (tuple) PyTuple_SET_ITEM(tuple, i, items[i]);
            else Py_XDECREF(items[i]);
        }
        if (tuple == NULL) r = E_PY;
        *out = tuple;
    }
    Py_XDECREF(event);
    Py_XDECREF(trace);
    Py_XDECREF(span);
    Py_XDECREF(attrs);
    Py_XDECREF(body.obj);
    return r;
}

/* InstrumentationScope: validated (strings, values), not returned. */
static int scope(const uint8_t *p, Py_ssize_t n)
{
    static const Ctx unlimited = {VALUE_DEPTH_CAP, -1, NULL};
    Buf b = {p, p + n};
    Field f;
    PyObject *k;
    Val v;
    int r = OK;
    while (r == OK && b.p < b.end) {
        if ((r = next_field(&b, &f))) break;
        if (f.wt != WT_LEN) continue;
        if (f.num == 1 || f.num == 2) {
            r = check_utf8(f.data, f.len);
        } else if (f.num == 3 && (r = key_value(&unlimited, f.data, f.len, 0, &k, &v)) == OK) {
            Py_DECREF(k);
            Py_XDECREF(v.obj);
        }
    }
    return r;
}

/* Raise ValueError for error r at resource_logs[i] (i < 0: the request), scope_logs[j]. */
static void raise_at(int r, int max_depth, Py_ssize_t i, Py_ssize_t j, const char *part)
{
    char where[128];
    if (r == E_PY) return; /* the Python error is already set */
    if (i < 0) snprintf(where, sizeof where, "request");
    else if (j < 0) snprintf(where, sizeof where, "resource_logs[%zd]%s", i, part);
    else snprintf(where, sizeof where, "resource_logs[%zd].scope_logs[%zd]%s", i, j, part);
    if (r == E_DEPTH)
        PyErr_Format(PyExc_ValueError, "%s: values are nested deeper than %d levels", where, max_depth);
    else
        PyErr_Format(PyExc_ValueError, "%s: %s", where,
                     r == E_UTF8 ? "a string field holds invalid UTF-8" : "truncated or malformed field");
}

static PyObject *record_error(int r, int max_depth)
{
    if (r == E_DEPTH) return PyUnicode_FromFormat("values are nested deeper than %d levels", max_depth);
    return PyUnicode_FromString(r == E_UTF8 ? "a string field holds invalid UTF-8"
                                            : "the record's bytes are truncated or malformed");
}

static PyObject *scope_logs(const Ctx *c, const uint8_t *p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t j)
{
    Buf b = {p, p + n};
    Field f;
    PyObject *records = PyList_New(0), *rec;
    int r;
    if (records == NULL) return NULL;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) {
            raise_at(r, c->max_depth, i, j, "");
            goto fail;
        }
        if (f.wt != WT_LEN) continue;
        if (f.num == 2) {
            if (c->max_records >= 0 && ++*c->records > c->max_records) {
                PyErr_Format(PyExc_OverflowError, "more than %zd log records", c->max_records);
                goto fail;
            }
            r = log_record(c, f.data, f.len, &rec);
            if (r == E_PY) goto fail;
            if (r != OK && (rec = record_error(r, c->max_depth)) == NULL) goto fail;
            r = PyList_Append(records, rec);
            Py_DECREF(rec);
            if (r < 0) goto fail;
        } else if (f.num == 1 && (r = scope(f.data, f.len))) {
            raise_at(r, VALUE_DEPTH_CAP, i, j, ".scope");
            goto fail;
        } else if (f.num == 3 && (r = check_utf8(f.data, f.len))) {
            raise_at(r, c->max_depth, i, j, ".schema_url");
            goto fail;
        }
    }
    return records;
fail:
    Py_DECREF(records);
    return NULL;
}

/* A message whose known fields 1..last are all strings (EntityRef): validated. */
static int strings_only(const uint8_t *p, Py_ssize_t n, uint32_t last)
{
    Buf b = {p, p + n};
    Field f;
    int r = OK;
    while (r == OK && b.p < b.end) {
        if ((r = next_field(&b, &f))) break;
        if (f.wt == WT_LEN && f.num <= last) r = check_utf8(f.data, f.len);
    }
    return r;
}

/* One occurrence of a Resource: its attributes are appended to attrs. */
static int resource(const Ctx *c, PyObject *attrs, const uint8_t *p, Py_ssize_t n)
{
    Buf b = {p, p + n};
    Field f;
    int r = OK, deep = 0;
    while (r == OK && b.p < b.end) {
        if ((r = next_field(&b, &f))) break;
        if (TAG(f.num, f.wt) == TAG(1, WT_LEN)) r = attribute(c, attrs, f.data, f.len, &deep);
        else if (TAG(f.num, f.wt) == TAG(3, WT_LEN)) r = strings_only(f.data, f.len, 4);
    }
    return r == OK && deep ? E_DEPTH : r;
}

static PyObject *resource_logs(const Ctx *c, const uint8_t *p, Py_ssize_t n, Py_ssize_t i)
{
    Buf b = {p, p + n};
    Field f;
    PyObject *attrs = PyList_New(0), *scopes = PyList_New(0), *joined = NULL, *res = NULL, *out = NULL, *s;
    const uint8_t *first = NULL; /* the resource's bytes: the first occurrence, then joined */
    Py_ssize_t first_len = 0;
    int r;
    if (attrs == NULL || scopes == NULL) goto done;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) {
            raise_at(r, c->max_depth, i, -1, "");
            goto done;
        }
        if (f.wt != WT_LEN) continue;
        if (f.num == 1) {
            if ((r = resource(c, attrs, f.data, f.len))) {
                raise_at(r, c->max_depth, i, -1, ".resource");
                goto done;
            }
            if (f.len == 0) continue;
            if (first == NULL) {
                first = f.data;
                first_len = f.len;
                continue;
            }
            if (joined == NULL && (joined = PyByteArray_FromStringAndSize((const char *)first, first_len)) == NULL)
                goto done;
            Py_ssize_t size = PyByteArray_GET_SIZE(joined);
            if (PyByteArray_Resize(joined, size + f.len) < 0) goto done; /* over-allocates */
            memcpy(PyByteArray_AS_STRING(joined) + size, f.data, (size_t)f.len);
        } else if (f.num == 2) {
            if ((s = scope_logs(c, f.data, f.len, i, PyList_GET_SIZE(scopes))) == NULL) goto done;
            r = PyList_Append(scopes, s);
            Py_DECREF(s);
            if (r < 0) goto done;
        } else if (f.num == 3 && (r = check_utf8(f.data, f.len))) {
            raise_at(r, c->max_depth, i, -1, ".schema_url");
            goto done;
        }
    }
    if (joined) res = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(joined), PyByteArray_GET_SIZE(joined));
    else res = PyBytes_FromStringAndSize(first ? (const char *)first : "", first_len);
    if (res) out = PyTuple_Pack(3, res, attrs, scopes);
done:
    Py_XDECREF(attrs);
    Py_XDECREF(scopes);
    Py_XDECREF(joined);
    Py_XDECREF(res);
    return out;
}

static PyObject *decode_request(const Ctx *c, const uint8_t *p, Py_ssize_t n)
{
    Buf b = {p, p + n};
    Field f;
    PyObject *out = PyList_New(0), *rl;
    int r;
    if (out == NULL) return NULL;
    while (b.p < b.end) {
        if ((r = next_field(&b, &f))) {
            raise_at(r, c->max_depth, -1, -1, "");
            goto fail;
        }
        if (TAG(f.num, f.wt) != TAG(1, WT_LEN)) continue;
        if ((rl = resource_logs(c, f.data, f.len, PyList_GET_SIZE(out))) == NULL) goto fail;
        r = PyList_Append(out, rl);
        Py_DECREF(rl);
        if (r < 0) goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* -- module ------------------------------------------------------------------------ */

static PyObject *decode_logs_request(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"data", "max_depth", "max_records", NULL};
    PyObject *data, *out;
    Py_buffer view;
    Py_ssize_t records = 0;
    Ctx ctx = {0, -1, &records};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oi|n:decode_logs_request", keywords, &data, &ctx.max_depth,
                                     &ctx.max_records))
        return NULL;
    if (ctx.max_depth < 0 || ctx.max_depth > VALUE_DEPTH_CAP)
        return PyErr_Format(PyExc_ValueError, "max_depth must be between 0 and %d", VALUE_DEPTH_CAP);
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    /* Every object made here ends up in the result, which has no cycles: the cyclic GC
     * has nothing to find while it is built, yet would run over and over as the objects
     * pile up (a quarter of the time in profiles). No other code runs meanwhile. */
    int gc_was_enabled = PyGC_Disable();
    out = decode_request(&ctx, (const uint8_t *)view.buf, view.len);
    if (gc_was_enabled) PyGC_Enable();
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_logs_request", (PyCFunction)(void (*)(void))decode_logs_request, METH_VARARGS | METH_KEYWORDS,
     "decode_logs_request(data, max_depth, max_records=-1) -> list\n\n"
     "Decode the bytes of an OTLP ExportLogsServiceRequest into plain Python objects\n"
     "(see otaudit_collector.core.otlp_model). A record that cannot be decoded is a str\n"
     "naming the reason; a broken request raises ValueError; more than max_records\n"
     "LogRecords (when not negative) raises OverflowError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "otaudit_collector.core._otlp_decode",
    "OTLP/protobuf ExportLogsServiceRequest bytes to plain Python objects.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__otlp_decode(void)
{
    return PyModule_Create(&module);
}
