/* The common case of yamlio._compose, in C over libyaml's own events.
 *
 * compose(text, max_depth, max_nodes, plain, resolve) builds what yamlio._compose builds for a
 * document without anchors, aliases or explicit tags, that loads without an error: the value,
 * the marks, the mentions and the plain flag. For anything else it returns None, and
 * yamlio._compose, the reference, decides: the error and its diagnostic, aliases, tags and
 * limits stay written once, in Python. A plain scalar that may be a number goes through
 * ``resolve`` (yamlio.resolve_plain), so the YAML 1.2 core schema is written once as well.
 *
 * The events come from the same libyaml as yaml.CSafeLoader's, fed the same UTF-8 bytes, so
 * the values and marks are those the reference sees.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <yaml.h>

typedef struct {
    PyObject *container; /* dict or list (owned) */
    int is_map;
    PyObject *loc;       /* tuple (owned) */
    PyObject *key;       /* pending key in a map (owned) or NULL */
    PyObject *key_mark;  /* (owned) or NULL */
} Frame;

/* Whether a string value may name a namespace file or a secret (yamlio.mentions). */
static int
mentions(const char *text)
{
    return strstr(text, "read") != NULL || strstr(text, "nsfile:") != NULL
        || strstr(text, "secret") != NULL;
}

/* yamlio.key_mentions: a key must hold a call or a URI as well. */
static int
key_mentions(const char *text)
{
    return (strchr(text, '(') != NULL || strstr(text, "nsfile:") != NULL)
        && mentions(text);
}

static PyObject *
make_mark(const yaml_mark_t *mark)
{
    PyObject *line = PyLong_FromSize_t(mark->line + 1);
    PyObject *column = PyLong_FromSize_t(mark->column + 1);
    PyObject *result = NULL;
    if (line != NULL && column != NULL)
        result = PyTuple_Pack(2, line, column);
    Py_XDECREF(line);
    Py_XDECREF(column);
    return result;
}

/* (*loc, key) */
static PyObject *
extend(PyObject *loc, PyObject *key)
{
    Py_ssize_t n = PyTuple_GET_SIZE(loc);
    PyObject *result = PyTuple_New(n + 1);
    if (result == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(loc, i);
        Py_INCREF(item);
        PyTuple_SET_ITEM(result, i, item);
    }
    Py_INCREF(key);
    PyTuple_SET_ITEM(result, n, key);
    return result;
}

/* (*loc, index) */
static PyObject *
extend_index(PyObject *loc, Py_ssize_t index)
{
    PyObject *key = PyLong_FromSsize_t(index);
    if (key == NULL)
        return NULL;
    PyObject *result = extend(loc, key);
    Py_DECREF(key);
    return result;
}

static int
is_nonfinite_float(PyObject *value)
{
    return PyFloat_CheckExact(value) && !isfinite(PyFloat_AS_DOUBLE(value));
}

/* A plain scalar that starts with one of "~nNtTfF": null, true, false or the text. */
static PyObject *
resolve_word(const char *s, PyObject *text)
{
    if (strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0
        || strcmp(s, "NULL") == 0)
        Py_RETURN_NONE;
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)
        Py_RETURN_TRUE;
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)
        Py_RETURN_FALSE;
    Py_INCREF(text);
    return text;
}

/* Status of the composition: go on, done, or leave it to the reference. */
enum { GO_ON = 0, DONE = 1, DECLINE = 2, FAILED = 3 };

typedef struct {
    Frame *stack;        /* stack[0] is the document; stack[depth] the innermost container */
    Py_ssize_t depth;
    Py_ssize_t max_depth;
    Py_ssize_t nodes;
    Py_ssize_t max_nodes;
    int plain;
    int documents;
    PyObject *root;
    PyObject *marks;
    PyObject *found;
    PyObject *resolve;
} State;

/* Put a finished node (value, with the mark of its own start) where it belongs. */
static int
place(State *st, PyObject *value, PyObject *mark)
{
    Frame *top = &st->stack[st->depth];
    if (st->depth == 0) {
        Py_INCREF(value);
        Py_XSETREF(st->root, value);
        return PyDict_SetItem(st->marks, top->loc, mark);
    }
    if (top->is_map) {
        PyObject *where = extend(top->loc, top->key);
        if (where == NULL)
            return -1;
        int failed = PyDict_SetItem(st->marks, where, top->key_mark) < 0
            || PyDict_SetItem(top->container, top->key, value) < 0;
        Py_DECREF(where);
        Py_CLEAR(top->key);
        Py_CLEAR(top->key_mark);
        return failed ? -1 : 0;
    }
    PyObject *where = extend_index(top->loc, PyList_GET_SIZE(top->container));
    if (where == NULL)
        return -1;
    int failed = PyDict_SetItem(st->marks, where, mark) < 0
        || PyList_Append(top->container, value) < 0;
    Py_DECREF(where);
    return failed ? -1 : 0;
}

static int
note(State *st, PyObject *mark, PyObject *text)
{
    PyObject *item = PyTuple_Pack(2, mark, text);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(st->found, item);
    Py_DECREF(item);
    return failed;
}

static int
on_scalar(State *st, yaml_event_t *event)
{
    const char *tag = (const char *)event->data.scalar.tag;
    if (event->data.scalar.anchor != NULL || (tag != NULL && strcmp(tag, "!") != 0))
        return DECLINE;
    const char *s = (const char *)event->data.scalar.value;
    size_t length = event->data.scalar.length;
    if (strlen(s) != length)
        return DECLINE; /* an escaped NUL in a quoted scalar */
    Frame *top = &st->stack[st->depth];
    PyObject *mark = make_mark(&event->start_mark);
    if (mark == NULL)
        return FAILED;
    PyObject *text = PyUnicode_DecodeUTF8(s, (Py_ssize_t)length, "strict");
    if (text == NULL) {
        Py_DECREF(mark);
        return FAILED;
    }
    int implicit = event->data.scalar.plain_implicit;
    int status = GO_ON;
    if (top->is_map && top->key == NULL) { /* a key: it stays its text */
        if (implicit && length && strchr("-+.0123456789", s[0]) != NULL) {
            PyObject *value = PyObject_CallOneArg(st->resolve, text);
            if (value == NULL)
                status = DECLINE;
            else {
                if (is_nonfinite_float(value))
                    st->plain = 0;
                Py_DECREF(value);
            }
        }
        if (status == GO_ON) {
            int seen = PyDict_Contains(top->container, text);
            if (seen != 0)
                status = seen < 0 ? FAILED : DECLINE; /* a duplicate key: the reference says so */
        }
        if (status == GO_ON && key_mentions(s) && note(st, mark, text) < 0)
            status = FAILED;
        if (status == GO_ON) {
            top->key = text;
            top->key_mark = mark;
            return GO_ON;
        }
        Py_DECREF(text);
        Py_DECREF(mark);
        return status;
    }
    PyObject *value;
    if (!implicit || (length && strchr("-+.0123456789~nNtTfF", s[0]) == NULL)) {
        value = text; /* quoted, or a plain word */
        Py_INCREF(value);
    }
    else if (length == 0) {
        value = Py_None;
        Py_INCREF(value);
    }
    else if (strchr("~nNtTfF", s[0]) != NULL)
        value = resolve_word(s, text);
    else { /* it may be a number */
        value = PyObject_CallOneArg(st->resolve, text);
        if (value == NULL) {
            PyErr_Clear();
            Py_DECREF(text);
            Py_DECREF(mark);
            return DECLINE;
        }
        if (is_nonfinite_float(value))
            st->plain = 0;
    }
    if (value == NULL)
        status = FAILED;
    else if (PyUnicode_CheckExact(value) && mentions(s))
        status = note(st, top->key != NULL ? top->key_mark : mark, value) < 0 ? FAILED : GO_ON;
    if (status == GO_ON && place(st, value, mark) < 0)
        status = FAILED;
    Py_XDECREF(value);
    Py_DECREF(text);
    Py_DECREF(mark);
    return status;
}

static int
on_start(State *st, yaml_event_t *event, int is_map)
{
    const yaml_char_t *anchor = is_map ? event->data.mapping_start.anchor
                                       : event->data.sequence_start.anchor;
    Frame *top = &st->stack[st->depth];
    if (anchor != NULL || (top->is_map && top->key == NULL) || st->depth >= st->max_depth)
        return DECLINE;
    PyObject *mark = make_mark(&event->start_mark);
    if (mark == NULL)
        return FAILED;
    PyObject *loc;
    if (st->depth == 0) {
        loc = top->loc;
        Py_INCREF(loc);
        if (PyDict_SetItem(st->marks, loc, mark) < 0)
            goto failed;
    }
    else if (top->is_map) {
        loc = extend(top->loc, top->key);
        if (loc == NULL || PyDict_SetItem(st->marks, loc, top->key_mark) < 0)
            goto failed;
    }
    else {
        loc = extend_index(top->loc, PyList_GET_SIZE(top->container));
        if (loc == NULL || PyDict_SetItem(st->marks, loc, mark) < 0)
            goto failed;
    }
    PyObject *container = is_map ? PyDict_New() : PyList_New(0);
    if (container == NULL) {
        Py_DECREF(loc);
        goto failed;
    }
    st->depth++;
    Frame *child = &st->stack[st->depth];
    child->container = container;
    child->is_map = is_map;
    child->loc = loc;
    child->key = NULL;
    child->key_mark = NULL;
    Py_DECREF(mark);
    return GO_ON;
failed:
    Py_XDECREF(loc);
    Py_DECREF(mark);
    return FAILED;
}

static int
on_end(State *st)
{
    Frame done = st->stack[st->depth];
    st->depth--;
    Frame *top = &st->stack[st->depth];
    int failed = 0;
    if (st->depth == 0) {
        Py_INCREF(done.container);
        Py_XSETREF(st->root, done.container);
    }
    else if (top->is_map) { /* its mark was recorded at its key when it opened */
        failed = PyDict_SetItem(top->container, top->key, done.container) < 0;
        Py_CLEAR(top->key);
        Py_CLEAR(top->key_mark);
    }
    else
        failed = PyList_Append(top->container, done.container) < 0;
    Py_DECREF(done.container);
    Py_DECREF(done.loc);
    Py_XDECREF(done.key);
    Py_XDECREF(done.key_mark);
    return failed ? FAILED : GO_ON;
}

static int
on_event(State *st, yaml_event_t *event)
{
    switch (event->type) {
    case YAML_SCALAR_EVENT:
        if (++st->nodes > st->max_nodes)
            return DECLINE;
        return on_scalar(st, event);
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        if (++st->nodes > st->max_nodes)
            return DECLINE;
        return on_start(st, event, event->type == YAML_MAPPING_START_EVENT);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        return on_end(st);
    case YAML_ALIAS_EVENT:
        return DECLINE;
    case YAML_DOCUMENT_START_EVENT:
        /* A second document: an error, or (allow_multi) the end; the reference decides. */
        return ++st->documents > 1 ? DECLINE : GO_ON;
    case YAML_STREAM_END_EVENT:
        return DONE;
    default:
        return GO_ON;
    }
}

static PyObject *
compose(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *source, *resolve;
    Py_ssize_t max_depth, max_nodes;
    int plain;
    if (!PyArg_ParseTuple(args, "UnnpO", &source, &max_depth, &max_nodes, &plain, &resolve))
        return NULL;
    if (max_depth < 0 || max_depth > 100000) {
        PyErr_SetString(PyExc_ValueError, "max_depth out of range");
        return NULL;
    }
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(source, &size);
    if (data == NULL)
        return NULL;

    State st = {0};
    st.max_depth = max_depth;
    st.max_nodes = max_nodes;
    st.plain = plain;
    st.resolve = resolve;
    st.stack = PyMem_Calloc((size_t)max_depth + 1, sizeof(Frame));
    st.marks = PyDict_New();
    st.found = PyList_New(0);
    PyObject *result = NULL;
    if (st.stack == NULL || st.marks == NULL || st.found == NULL)
        goto cleanup;
    st.stack[0].loc = PyTuple_New(0);
    if (st.stack[0].loc == NULL)
        goto cleanup;

    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        PyErr_NoMemory();
        goto cleanup;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, (size_t)size);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    int status = GO_ON;
    while (status == GO_ON) {
        yaml_event_t event;
        if (!yaml_parser_parse(&parser, &event)) {
            status = DECLINE; /* a syntax error: the reference words it */
            break;
        }
        status = on_event(&st, &event);
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);

    if (status == DONE) {
        PyObject *origin = Py_BuildValue("(ii)", 1, 1);
        if (origin != NULL && PyDict_SetDefault(st.marks, st.stack[0].loc, origin) != NULL) {
            PyObject *found = PyList_AsTuple(st.found);
            if (found != NULL)
                result = Py_BuildValue("(OONO)", st.root ? st.root : Py_None, st.marks, found,
                                       st.plain ? Py_True : Py_False);
        }
        Py_XDECREF(origin);
    }
    else if (status == DECLINE) {
        PyErr_Clear();
        result = Py_None;
        Py_INCREF(result);
    }

cleanup:
    if (st.stack != NULL) {
        for (Py_ssize_t i = 0; i <= st.depth; i++) {
            Py_XDECREF(st.stack[i].container);
            Py_XDECREF(st.stack[i].loc);
            Py_XDECREF(st.stack[i].key);
            Py_XDECREF(st.stack[i].key_mark);
        }
        PyMem_Free(st.stack);
    }
    Py_XDECREF(st.root);
    Py_XDECREF(st.marks);
    Py_XDECREF(st.found);
    return result;
}

static PyMethodDef methods[] = {
    {"compose", compose, METH_VARARGS,
     "compose(text, max_depth, max_nodes, plain, resolve) -> (value, marks, mentions, plain)"
     " or None when yamlio._compose must decide."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "headwater._compose",
    "The common case of yamlio._compose, in C over libyaml's events.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__compose(void)
{
    return PyModule_Create(&module);
}
