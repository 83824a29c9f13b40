/* naming.identity, compiled: the key every push is looked up by.

   It answers exactly what naming.python_identity answers (the tests compare the two on every
   kind of push), reading the same things the same way: exact types decide, and where the
   Python reads an attribute through an object (a bound method's __name__, a generator-based
   manager's gen) this reads it through the object too, so a proxy gets the same answer and
   raises the same error. Only reads that no Python code can change are taken from the
   objects' structs: a function's code, closure dict and qualified name, a code object's name. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject *sync_cb_code;    /* the code of contextlib's callback() wrapper */
    PyObject *async_cb_code;   /* ... and of push_async_callback()'s */
    PyObject *kind_callback;   /* semconv.KIND_CALLBACK, and the five below */
    PyObject *kind_async_callback;
    PyObject *kind_exit;
    PyObject *kind_async_exit;
    PyObject *kind_context;
    PyObject *kind_async_context;
    PyObject *generator_cm_base; /* contextlib._GeneratorContextManagerBase */
    PyObject *wrapper_code_names; /* naming._WRAPPER_CODE_NAMES, a frozenset */
    PyObject *transparent_wrappers; /* naming._TRANSPARENT_WRAPPERS: (module, name) pairs */
    PyObject *str_wrapped;        /* interned attribute names */
    PyObject *str_name;
    PyObject *str_exit;
    PyObject *str_aexit;
    PyObject *str_gen;
    PyObject *str_qualname;
} module_state;

#define STATE_FIELDS 17

static inline module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

static inline PyObject **
state_fields(module_state *state)
{
    return (PyObject **)state;
}

static PyObject *
key(PyObject *stack_name, PyObject *kind, PyObject *name)
{
    return PyTuple_Pack(3, stack_name, kind, name);
}

/* getattr(function, "__wrapped__", None), from the function's own dict: FunctionType has no
   attribute of that name, so the dict is where getattr finds it (a new reference, or NULL with
   no error when absent). */
static PyObject *
wrapped_of(module_state *state, PyObject *function)
{
    PyObject *dict = ((PyFunctionObject *)function)->func_dict;
    if (dict == NULL) {
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(dict, state->str_wrapped);
    Py_XINCREF(found);
    return found;
}

static PyObject *
function_key(module_state *state, PyObject *pushed, int is_sync, PyObject *stack_name)
{
    PyObject *code = PyFunction_GET_CODE(pushed);
    if (code != state->sync_cb_code && code != state->async_cb_code) {
        PyObject *kind = is_sync ? state->kind_exit : state->kind_async_exit;
        return key(stack_name, kind, ((PyFunctionObject *)pushed)->func_qualname);
    }
    PyObject *wrapper = code == state->sync_cb_code ? state->kind_callback : state->kind_async_callback;
    PyObject *target = wrapped_of(state, pushed);
    if (target == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (Py_IS_TYPE(target, &PyMethod_Type)) {
        Py_SETREF(target, Py_NewRef(PyMethod_GET_FUNCTION(target)));
    }
    PyObject *result;
    if (Py_IS_TYPE(target, &PyFunction_Type)) {
        result = key(stack_name, wrapper, ((PyFunctionObject *)target)->func_qualname);
    }
    else {
        result = Py_NewRef(Py_None);
    }
    Py_DECREF(target);
    return result;
}

/* The key of one manager: a new reference to the key or None, or (with *next set) to the
   manager a FastAPI wrapper holds, whose key is the answer; NULL on error. */
static PyObject *
manager_key(module_state *state, PyObject *manager, PyObject *manager_kind, PyObject *stack_name, int *next)
{
    PyObject *manager_type = (PyObject *)Py_TYPE(manager);
    int generator_based = PyObject_IsSubclass(manager_type, state->generator_cm_base);
    if (generator_based < 0) {
        return NULL;
    }
    if (!generator_based) {
        return key(stack_name, manager_kind, manager_type);
    }
    PyObject *gen = PyObject_GetAttr(manager, state->str_gen);
    if (gen == NULL) {
        return NULL;
    }
    int is_generator = Py_IS_TYPE(gen, &PyGen_Type);
    if (!is_generator && !Py_IS_TYPE(gen, &PyAsyncGen_Type)) {
        Py_DECREF(gen);
        Py_RETURN_NONE;
    }
    PyObject *result = NULL, *code = NULL, *code_name = NULL, *frame = NULL;
    code = PyObject_GetAttrString(gen, is_generator ? "gi_code" : "ag_code");
    if (code == NULL) {
        goto done;
    }
    code_name = PyCode_Check(code) ? Py_NewRef(((PyCodeObject *)code)->co_name)
                                   : PyObject_GetAttrString(code, "co_name");
    if (code_name == NULL) {
        goto done;
    }
    int wrapper = PySet_Contains(state->wrapper_code_names, code_name);
    if (wrapper < 0) {
        goto done;
    }
    if (!wrapper) {
        PyObject *qualname = PyObject_GetAttr(gen, state->str_qualname);
        if (qualname != NULL) {
            result = key(stack_name, manager_kind, qualname);
            Py_DECREF(qualname);
        }
        goto done;
    }
    /* a FastAPI wrapper (every sync dependency that yields): the key of what it holds */
    frame = PyObject_GetAttrString(gen, is_generator ? "gi_frame" : "ag_frame");
    if (frame == NULL) {
        goto done;
    }
    if (frame == Py_None) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *globals = PyObject_GetAttrString(frame, "f_globals");
    PyObject *module = globals == NULL ? NULL : PyObject_CallMethod(globals, "get", "s", "__name__");
    Py_XDECREF(globals);
    if (module == NULL) {
        goto done;
    }
    PyObject *pair = PyTuple_Pack(2, module, code_name);
    Py_DECREF(module);
    if (pair == NULL) {
        goto done;
    }
    int transparent = PySet_Contains(state->transparent_wrappers, pair);
    Py_DECREF(pair);
    if (transparent < 0) {
        goto done;
    }
    if (!transparent) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *held;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyFrame_Check(frame)) {
        /* frame.f_locals.get("cm"), without the mapping of every local that f_locals makes */
        held = PyFrame_GetVarString((PyFrameObject *)frame, "cm");
        if (held == NULL && PyErr_ExceptionMatches(PyExc_NameError)) {
            PyErr_Clear();
            held = Py_NewRef(Py_None);
        }
    }
    else
#endif
    {
        PyObject *locals = PyObject_GetAttrString(frame, "f_locals");
        held = locals == NULL ? NULL : PyObject_CallMethod(locals, "get", "s", "cm");
        Py_XDECREF(locals);
    }
    if (held == NULL) {
        goto done;
    }
    if (held == Py_None) {
        result = held;
    }
    else {
        result = held;
        *next = 1;
    }

done:
    Py_XDECREF(frame);
    Py_XDECREF(code_name);
    Py_XDECREF(code);
    Py_DECREF(gen);
    return result;
}

static PyObject *
method_key(module_state *state, PyObject *pushed, int is_sync, PyObject *stack_name)
{
    PyObject *name = PyObject_GetAttr(pushed, state->str_name);
    if (name == NULL) {
        return NULL;
    }
    /* `name in ("__exit__", "__aexit__")`: each item compared with name, in this order */
    int is_exit = PyObject_RichCompareBool(state->str_exit, name, Py_EQ);
    if (is_exit == 0) {
        is_exit = PyObject_RichCompareBool(state->str_aexit, name, Py_EQ);
    }
    Py_DECREF(name);
    if (is_exit < 0) {
        return NULL;
    }
    if (!is_exit) {
        Py_RETURN_NONE;
    }
    PyObject *manager_kind = is_sync ? state->kind_context : state->kind_async_context;
    PyObject *manager = Py_NewRef(PyMethod_GET_SELF(pushed));
    PyObject *result = NULL;
    /* as context_manager_name looks through FastAPI's wrappers, at most four deep */
    for (int depth = 0; depth < 4; depth++) {
        int next = 0;
        result = manager_key(state, manager, manager_kind, stack_name, &next);
        if (result == NULL || !next) {
            break;
        }
        Py_SETREF(manager, result); /* the manager a FastAPI wrapper holds */
        result = NULL;
        if (depth == 3) {
            result = Py_NewRef(Py_None);
        }
    }
    Py_DECREF(manager);
    return result;
}

/* identity(pushed, is_sync, stack_name): naming.identity's answer */
static PyObject *
identity(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "identity() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    module_state *state = get_state(module);
    if (state->sync_cb_code == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "identity() before setup()");
        return NULL;
    }
    PyObject *pushed = args[0], *stack_name = args[2];
    int is_sync = PyObject_IsTrue(args[1]);
    if (is_sync < 0) {
        return NULL;
    }
    if (Py_IS_TYPE(pushed, &PyFunction_Type)) {
        return function_key(state, pushed, is_sync, stack_name);
    }
    if (Py_IS_TYPE(pushed, &PyMethod_Type)) {
        return method_key(state, pushed, is_sync, stack_name);
    }
    Py_RETURN_NONE;
}

/* setup(sync_cb_code, async_cb_code, kinds, generator_cm_base, wrapper_code_names,
   transparent_wrappers), where kinds is (callback, async_callback, exit, async_exit, context,
   async_context) */
static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyCode_Check(args[0]) || !PyCode_Check(args[1]) || !PyTuple_CheckExact(args[2])
        || PyTuple_GET_SIZE(args[2]) != 6 || !PyType_Check(args[3]) || !PyFrozenSet_CheckExact(args[4])
        || !PyFrozenSet_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(sync_cb_code, async_cb_code, kinds: 6-tuple, generator_cm_base: type, "
                        "wrapper_code_names: frozenset, transparent_wrappers: frozenset)");
        return NULL;
    }
    module_state *state = get_state(module);
    PyObject *values[STATE_FIELDS] = {
        args[0], args[1],
        PyTuple_GET_ITEM(args[2], 0), PyTuple_GET_ITEM(args[2], 1), PyTuple_GET_ITEM(args[2], 2),
        PyTuple_GET_ITEM(args[2], 3), PyTuple_GET_ITEM(args[2], 4), PyTuple_GET_ITEM(args[2], 5),
        args[3], args[4], args[5],
    };
    const char *names[] = {"__wrapped__", "__name__", "__exit__", "__aexit__", "gen", "__qualname__"};
    for (int i = 0; i < 6; i++) {
        values[11 + i] = PyUnicode_InternFromString(names[i]);
        if (values[11 + i] == NULL) {
            for (int j = 11; j < 11 + i; j++) {
                Py_DECREF(values[j]);
            }
            return NULL;
        }
    }
    PyObject **fields = state_fields(state);
    for (int i = 0; i < STATE_FIELDS; i++) {
        if (i < 11) {
            Py_INCREF(values[i]);
        }
        Py_XSETREF(fields[i], values[i]);
    }
    Py_RETURN_NONE;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    PyObject **fields = state_fields(get_state(module));
    for (int i = 0; i < STATE_FIELDS; i++) {
        Py_VISIT(fields[i]);
    }
    return 0;
}

static int
module_clear(PyObject *module)
{
    PyObject **fields = state_fields(get_state(module));
    for (int i = 0; i < STATE_FIELDS; i++) {
        Py_CLEAR(fields[i]);
    }
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyMethodDef module_methods[] = {
    {"identity", (PyCFunction)(void (*)(void))identity, METH_FASTCALL,
     "identity(pushed, is_sync, stack_name): the key a push is looked up by, or None."},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(sync_cb_code, async_cb_code, kinds, generator_cm_base, wrapper_code_names, "
     "transparent_wrappers)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
#ifdef Py_GIL_DISABLED
    /* reads only, of objects the caller holds */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef identity_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exitstack_otel._identity",
    .m_doc = "naming.identity, compiled (see exitstack_otel.naming).",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__identity(void)
{
    return PyModuleDef_Init(&identity_module);
}
