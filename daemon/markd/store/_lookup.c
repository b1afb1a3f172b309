/*
 * markd.store._lookup: the store's hot read path in C.
 *
 * Store.lookup() in Python needs a transaction object, two or three py-lmdb method calls and
 * the attribute lookups around them: on a 10-million-entry store that is most of a 5 µs
 * budget before LMDB walks a single page. This module does the walk of one lookup (the КИ
 * probe, the optional GTIN probe and the units probe) in one call, in one read transaction
 * that is kept between calls and only reset/renewed (the cheap way LMDB offers to reuse a
 * reader slot).
 *
 * It does not open LMDB itself. LMDB must not be opened twice in one process (its locks are
 * fcntl() locks, owned by the process, released by any close of the file), so the reader
 * borrows the MDB_env of the py-lmdb Environment that markd.store already holds, and calls
 * the LMDB functions compiled into py-lmdb's own extension (py-lmdb exports them as
 * mdb09_* / mdb10_* together with one function table per bundled LMDB version). Reaching
 * the MDB_env means reading py-lmdb's object layout, which is private: markd.store.fastpath
 * enables this module only for py-lmdb versions whose layout was checked, and attach()
 * verifies the layout before it dereferences anything (the Environment's engine-table
 * pointer must equal the address of one of the exported tables, and a database handle must
 * point back at its Environment). When anything does not match, attach() raises and markd
 * keeps using the pure-Python path: slower, never wrong.
 *
 * Thread safety: every call keeps the GIL, so calls on one reader never overlap. py-lmdb
 * opens environments with MDB_NOTLS, so the transaction may be renewed on any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the few LMDB declarations used (LMDB's public C API, stable since 0.9) ---- */
typedef struct MDB_env MDB_env;
typedef struct MDB_txn MDB_txn;
typedef unsigned int MDB_dbi;
typedef struct {
    size_t mv_size;
    void *mv_data;
} MDB_val;
#define LMDB_RDONLY 0x20000
#define LMDB_NOTFOUND (-30798)

typedef int (*txn_begin_fn)(MDB_env *, MDB_txn *, unsigned int, MDB_txn **);
typedef void (*txn_end_fn)(MDB_txn *);
typedef int (*txn_renew_fn)(MDB_txn *);
typedef size_t (*txn_id_fn)(MDB_txn *);
typedef int (*get_fn)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *);

typedef struct {
    const void *table; /* address of py-lmdb's function table for this LMDB version */
    txn_begin_fn txn_begin;
    txn_end_fn txn_abort;
    txn_end_fn txn_reset;
    txn_renew_fn txn_renew;
    txn_id_fn txn_id;
    get_fn get;
} Engine;

/* ---- py-lmdb 3.0 object layout (private; verified at attach time, see above) ---- */
typedef struct {
    void *prev;
    void *next;
} pylmdb_links;

typedef struct {
    PyObject_HEAD
    pylmdb_links siblings;
    pylmdb_links children;
    int valid;
} pylmdb_head;

typedef struct {
    pylmdb_head head;
    PyObject *weaklist;
    MDB_env *env;
    const void *engine_table;
} pylmdb_env;

typedef struct {
    pylmdb_head head;
    pylmdb_env *env;
    MDB_dbi dbi;
    unsigned int flags;
} pylmdb_db;

/* ---- engines resolved from the loaded py-lmdb extension ---- */
#define MAX_ENGINES 2
static Engine engines[MAX_ENGINES];
static int engine_count = 0;

static int
resolve_engine(void *lib, const char *table_name, const char *prefix, Engine *out)
{
    char name[64];
    void *sym;
    out->table = dlsym(lib, table_name);
    if (out->table == NULL)
        return 0;
#define RESOLVE(field, suffix, type)                                  \
    snprintf(name, sizeof name, "%s%s", prefix, suffix);              \
    sym = dlsym(lib, name);                                           \
    if (sym == NULL)                                                  \
        return 0;                                                     \
    out->field = (type)sym;
    RESOLVE(txn_begin, "_txn_begin", txn_begin_fn)
    RESOLVE(txn_abort, "_txn_abort", txn_end_fn)
    RESOLVE(txn_reset, "_txn_reset", txn_end_fn)
    RESOLVE(txn_renew, "_txn_renew", txn_renew_fn)
    RESOLVE(txn_id, "_txn_id", txn_id_fn)
    RESOLVE(get, "_get", get_fn)
#undef RESOLVE
    return 1;
}

/* load_engines(path_of_pylmdb_extension) -> number of engines found */
static PyObject *
load_engines(PyObject *module, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    void *lib;
    if (path == NULL)
        return NULL;
    /* RTLD_NOLOAD: only ever use the copy Python has already loaded, never a second one. */
    lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_ImportError, "py-lmdb extension %s is not loaded", path);
        return NULL;
    }
    engine_count = 0;
    if (resolve_engine(lib, "lmdb_api_v09", "mdb09", &engines[engine_count]))
        engine_count++;
    if (resolve_engine(lib, "lmdb_api_v10", "mdb10", &engines[engine_count]))
        engine_count++;
    /* The handle is kept open on purpose: py-lmdb stays loaded for the process's life. */
    return PyLong_FromLong(engine_count);
}

/* ---- Reader ---- */
typedef struct {
    PyObject_HEAD
    PyObject *env_object; /* strong reference to the py-lmdb Environment */
    pid_t pid;            /* the process that attached: a forked child must not touch txn */
    const Engine *engine;
    MDB_txn *txn; /* reset (idle) between calls; NULL until the first call */
    /* set by configure() */
    int configured;
    MDB_dbi live;
    int gtin;
    long units;
    size_t seen_txn;
    double max_age_s;
    int has_synced;
    double synced_at;
    PyObject *unit_keys;
    PyObject *attrs;
    PyObject *version;
    PyObject *lookup_type;
    PyObject *block_type;
} Reader;

static pylmdb_env *
reader_env(Reader *self)
{
    pylmdb_env *env;
    if (self->env_object == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "reader is closed");
        return NULL;
    }
    env = (pylmdb_env *)self->env_object;
    if (!env->head.valid || env->env == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "environment is closed");
        return NULL;
    }
    return env;
}

static void
reader_release(Reader *self)
{
    /* In a forked child the transaction's reader slot belongs to the parent (LMDB records
     * it under the parent's pid): aborting it here would free the parent's slot for another
     * process to take while the parent still uses it. The child leaves it alone. */
    if (self->txn != NULL && self->env_object != NULL && self->pid == getpid()) {
        pylmdb_env *env = (pylmdb_env *)self->env_object;
        /* After the Environment was closed its MDB_env is gone and so is our reader slot:
         * aborting would touch freed memory, so the few bytes are left instead. */
        if (env->head.valid && env->env != NULL)
            self->engine->txn_abort(self->txn);
    }
    self->txn = NULL;
    self->configured = 0;
    Py_CLEAR(self->env_object);
    Py_CLEAR(self->unit_keys);
    Py_CLEAR(self->attrs);
    Py_CLEAR(self->version);
    Py_CLEAR(self->lookup_type);
    Py_CLEAR(self->block_type);
}

static void
reader_dealloc(Reader *self)
{
    reader_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
reader_close(Reader *self, PyObject *unused)
{
    reader_release(self);
    Py_RETURN_NONE;
}

/* dbi(database) -> int: the handle number of a py-lmdb _Database of this environment. */
static PyObject *
reader_dbi(Reader *self, PyObject *db_object)
{
    pylmdb_db *db = (pylmdb_db *)db_object;
    if (reader_env(self) == NULL)
        return NULL;
    if (strcmp(Py_TYPE(db_object)->tp_name, "_Database") != 0 ||
        (PyObject *)db->env != self->env_object || !db->head.valid) {
        PyErr_SetString(PyExc_TypeError, "not a database of this environment");
        return NULL;
    }
    return PyLong_FromUnsignedLong(db->dbi);
}

/*
 * configure(live, gtin, units, unit_keys, attrs, seen_txn, version, synced_at, max_age_s,
 *           lookup_type, block_type)
 *
 * What Store._refresh() learnt from the last committed transaction it read: the live slot's
 * handle, whether GTIN blocks exist, the units handle and key set, the block attributes
 * cache (a dict the store keeps filling), the transaction id these facts belong to, the
 * blocklist version and sync time, the freshness limit, and the two named-tuple classes to
 * answer with. The objects are kept by reference, so the store's in-place additions (a unit
 * sold, an attribute read) are seen without another call.
 */
static PyObject *
reader_configure(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    long live, units;
    int gtin;
    unsigned long long seen;
    double max_age;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "configure() takes 11 arguments");
        return NULL;
    }
    live = PyLong_AsLong(args[0]);
    gtin = PyObject_IsTrue(args[1]);
    units = PyLong_AsLong(args[2]);
    seen = PyLong_AsUnsignedLongLong(args[5]);
    max_age = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred() || gtin < 0)
        return NULL;
    if (!PyAnySet_Check(args[3]) || !PyDict_Check(args[4]) || !PyType_Check(args[9]) ||
        !PyType_Check(args[10]) || !PyType_IsSubtype((PyTypeObject *)args[9], &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)args[10], &PyTuple_Type) ||
        (args[7] != Py_None && !PyNumber_Check(args[7]))) {
        PyErr_SetString(PyExc_TypeError, "configure(): argument of the wrong type");
        return NULL;
    }
    self->live = (MDB_dbi)live;
    self->gtin = gtin;
    self->units = units;
    self->seen_txn = (size_t)seen;
    self->max_age_s = max_age;
    self->has_synced = args[7] != Py_None;
    self->synced_at = self->has_synced ? PyFloat_AsDouble(args[7]) : 0.0;
    if (PyErr_Occurred())
        return NULL;
    Py_INCREF(args[3]);
    Py_XSETREF(self->unit_keys, args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(self->attrs, args[4]);
    Py_INCREF(args[6]);
    Py_XSETREF(self->version, args[6]);
    Py_INCREF(args[9]);
    Py_XSETREF(self->lookup_type, args[9]);
    Py_INCREF(args[10]);
    Py_XSETREF(self->block_type, args[10]);
    self->configured = 1;
    Py_RETURN_NONE;
}

/* An instance of a tuple subclass (a named tuple) holding the given new references. */
static PyObject *
named_tuple(PyObject *type_object, Py_ssize_t size, PyObject **items)
{
    PyTypeObject *type = (PyTypeObject *)type_object;
    PyObject *result = type->tp_alloc(type, size);
    Py_ssize_t i;
    if (result == NULL) {
        for (i = 0; i < size; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (i = 0; i < size; i++) {
        if (items[i] == NULL) {
            Py_DECREF(result); /* the slots filled so far are released with it */
            for (i = i + 1; i < size; i++)
                Py_XDECREF(items[i]);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, items[i]);
    }
    return result;
}

/*
 * lookup(key, now) -> Lookup or None
 *
 * key: the unit key "01<GTIN>21<serial>"; now: seconds since the epoch or None for the
 * current time. Answers like Store.lookup() for the cases that need no Python: the КИ probe,
 * the GTIN probe when GTIN blocks exist, and a unit that is not in the units database. None
 * means "take the Python path": something was committed since configure(), the unit is
 * sold or has a cached verdict (its JSON is decoded in Python), a block attribute not cached
 * yet, or LMDB answered something other than found / not found (a map resized by another
 * process...), all of which the Python path knows how to handle.
 */
static PyObject *
reader_lookup(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    pylmdb_env *env;
    const Engine *engine = self->engine;
    char *key_data;
    Py_ssize_t key_len;
    int rc, kind_gtin = 0;
    MDB_val key, value;
    unsigned char block[8];
    double now, age = 0.0, synced_at, max_age_s;
    int has_synced;
    PyObject *blocked = Py_None, *items[6], *result;
    PyObject *version, *lookup_type, *block_type, *attrs;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lookup(key, now)");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(args[0], &key_data, &key_len) < 0)
        return NULL;
    if (args[1] == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    } else {
        now = PyFloat_AsDouble(args[1]);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    }
    /* A closed or invalidated environment, an unconfigured reader or a forked child: the
     * Python path answers (and raises the StoreError that fits). */
    if (self->env_object == NULL || !self->configured || self->pid != getpid())
        Py_RETURN_NONE;
    env = (pylmdb_env *)self->env_object;
    if (!env->head.valid || env->env == NULL)
        Py_RETURN_NONE;
    if (self->units >= 0) {
        /* Checked before the transaction: a unit with facts goes to the Python path anyway. */
        int known = PySet_Contains(self->unit_keys, args[0]);
        if (known != 0)
            return known < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    }

    if (self->txn == NULL)
        rc = engine->txn_begin(env->env, NULL, LMDB_RDONLY, &self->txn);
    else
        rc = engine->txn_renew(self->txn);
    if (rc != 0) {
        if (self->txn != NULL)
            engine->txn_abort(self->txn);
        self->txn = NULL;
        Py_RETURN_NONE;
    }
    if (engine->txn_id(self->txn) != self->seen_txn) {
        engine->txn_reset(self->txn);
        Py_RETURN_NONE;
    }
    key.mv_size = (size_t)key_len;
    key.mv_data = key_data;
    rc = engine->get(self->txn, self->live, &key, &value);
    if (rc == LMDB_NOTFOUND && self->gtin && key_len >= 16) {
        MDB_val gtin_key;
        gtin_key.mv_size = 14;
        gtin_key.mv_data = key_data + 2;
        rc = engine->get(self->txn, self->live, &gtin_key, &value);
        kind_gtin = rc == 0;
    }
    if (rc == 0 && value.mv_size == sizeof block)
        memcpy(block, value.mv_data, sizeof block); /* copied while the snapshot is held */
    engine->txn_reset(self->txn);
    if (rc != 0 && rc != LMDB_NOTFOUND)
        Py_RETURN_NONE;
    /* From here on Python objects are allocated, and an allocation may run the garbage
     * collector and with it any Python code (a finaliser could even close the store and clear
     * this reader): work on our own references and copies of what configure() gave. */
    version = self->version;
    lookup_type = self->lookup_type;
    block_type = self->block_type;
    attrs = self->attrs;
    Py_INCREF(version);
    Py_INCREF(lookup_type);
    Py_INCREF(block_type);
    Py_INCREF(attrs);
    has_synced = self->has_synced;
    synced_at = self->synced_at;
    max_age_s = self->max_age_s;
    if (rc == 0) {
        /* The block value: since and attribute id, two little-endian uint32 (keys.py). */
        PyObject *attr_id, *pair, *entry[5];
        unsigned long since, attr;
        if (value.mv_size != sizeof block)
            goto python_path; /* damaged: the Python path raises store-corrupt */
        since = block[0] | block[1] << 8 | block[2] << 16 | (unsigned long)block[3] << 24;
        attr = block[4] | block[5] << 8 | block[6] << 16 | (unsigned long)block[7] << 24;
        attr_id = PyLong_FromUnsignedLong(attr);
        if (attr_id == NULL)
            goto error;
        pair = PyDict_GetItemWithError(attrs, attr_id);
        Py_DECREF(attr_id);
        if (pair == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto python_path; /* not read yet: the Python path reads and caches it */
        }
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)
            goto python_path;
        Py_INCREF(pair); /* borrowed from the dict, which the allocations below could change */
        entry[0] = PyUnicode_FromString(kind_gtin ? "gtin" : "ki");
        entry[1] = kind_gtin ? PyBytes_FromStringAndSize(key_data + 2, 14)
                             : (Py_INCREF(args[0]), args[0]);
        entry[2] = PyTuple_GET_ITEM(pair, 0);
        Py_INCREF(entry[2]);
        entry[3] = PyTuple_GET_ITEM(pair, 1);
        Py_INCREF(entry[3]);
        entry[4] = PyLong_FromUnsignedLong(since);
        Py_DECREF(pair);
        blocked = named_tuple(block_type, 5, entry);
        if (blocked == NULL)
            goto error;
    } else {
        Py_INCREF(Py_None);
    }
    items[0] = blocked;
    items[1] = (Py_INCREF(Py_None), Py_None);
    items[2] = (Py_INCREF(Py_None), Py_None);
    items[3] = version;
    version = NULL; /* the reference moved into items */
    if (has_synced) {
        age = now > synced_at ? now - synced_at : 0.0;
        items[4] = PyFloat_FromDouble(age);
        items[5] = PyBool_FromLong(age > max_age_s);
    } else {
        items[4] = (Py_INCREF(Py_None), Py_None);
        items[5] = (Py_INCREF(Py_True), Py_True);
    }
    result = named_tuple(lookup_type, 6, items);
    Py_DECREF(lookup_type);
    Py_DECREF(block_type);
    Py_DECREF(attrs);
    return result;

python_path:
    Py_DECREF(version);
    Py_DECREF(lookup_type);
    Py_DECREF(block_type);
    Py_DECREF(attrs);
    Py_RETURN_NONE;
error:
    Py_XDECREF(version);
    Py_DECREF(lookup_type);
    Py_DECREF(block_type);
    Py_DECREF(attrs);
    return NULL;
}

static PyMethodDef reader_methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))reader_lookup, METH_FASTCALL,
     "lookup(key, now) -> Lookup, or None for the Python path"},
    {"configure", (PyCFunction)(void (*)(void))reader_configure, METH_FASTCALL,
     "configure(live, gtin, units, unit_keys, attrs, seen_txn, version, synced_at, "
     "max_age_s, lookup_type, block_type)"},
    {"dbi", (PyCFunction)reader_dbi, METH_O, "dbi(database) -> handle number"},
    {"close", (PyCFunction)reader_close, METH_NOARGS, "abort the kept transaction"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "markd.store._lookup.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A kept read transaction on a py-lmdb Environment (see attach()).",
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
};

/* attach(environment, environment_type) -> Reader */
static PyObject *
attach(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    pylmdb_env *env;
    const Engine *engine = NULL;
    Reader *reader;
    int i;

    if (nargs != 2 || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "attach(environment, lmdb.Environment)");
        return NULL;
    }
    if (engine_count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "load_engines() found no LMDB engine");
        return NULL;
    }
    if (Py_TYPE(args[0]) != (PyTypeObject *)args[1] ||
        ((PyTypeObject *)args[1])->tp_basicsize < (Py_ssize_t)sizeof(pylmdb_env)) {
        PyErr_SetString(PyExc_TypeError, "not a py-lmdb Environment of the expected layout");
        return NULL;
    }
    env = (pylmdb_env *)args[0];
    for (i = 0; i < engine_count; i++)
        if (env->engine_table == engines[i].table)
            engine = &engines[i];
    if (engine == NULL) {
        PyErr_SetString(PyExc_TypeError, "py-lmdb Environment layout not recognised");
        return NULL;
    }
    if (!env->head.valid || env->env == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "environment is closed");
        return NULL;
    }
    reader = PyObject_New(Reader, &ReaderType);
    if (reader == NULL)
        return NULL;
    Py_INCREF(args[0]);
    reader->env_object = args[0];
    reader->engine = engine;
    reader->txn = NULL;
    reader->pid = getpid();
    reader->configured = 0;
    reader->unit_keys = reader->attrs = reader->version = NULL;
    reader->lookup_type = reader->block_type = NULL;
    return (PyObject *)reader;
}

static PyMethodDef module_methods[] = {
    {"load_engines", (PyCFunction)load_engines, METH_O,
     "load_engines(path) -> count: find LMDB in the loaded py-lmdb extension at path"},
    {"attach", (PyCFunction)(void (*)(void))attach, METH_FASTCALL,
     "attach(environment, lmdb.Environment) -> Reader"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lookup_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "markd.store._lookup",
    .m_doc = "The store's lookup path in C (see markd.store.fastpath).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__lookup(void)
{
    PyObject *module;
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    module = PyModule_Create(&lookup_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(module, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
