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
    PyObject *str_wrapped;        /* interned attribute names */
    PyObject *str_name;
    PyObject *str_exit;
    PyObject *str_aexit;
    PyObject *str_gen;
    PyObject *str_qualname;
} module_state;

#define STATE_FIELDS 16

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
    PyObject *manager = PyMethod_GET_SELF(pushed);
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
    PyObject *code_name = NULL;
    if (Py_IS_TYPE(gen, &PyGen_Type) || Py_IS_TYPE(gen, &PyAsyncGen_Type)) {
        /* gi_code and ag_code: the frame's code, or the code it was made with */
        PyObject *code = PyObject_GetAttrString(gen, Py_IS_TYPE(gen, &PyGen_Type) ? "gi_code" : "ag_code");
        if (code == NULL) {
            Py_DECREF(gen);
            return NULL;
        }
        code_name = PyCode_Check(code) ? Py_NewRef(((PyCodeObject *)code)->co_name)
                                       : PyObject_GetAttrString(code, "co_name");
        Py_DECREF(code);
        if (code_name == NULL) {
            Py_DECREF(gen);
            return NULL;
        }
    }
    else {
        Py_DECREF(gen);
        Py_RETURN_NONE;
    }
    int wrapper = PySet_Contains(state->wrapper_code_names, code_name);
    Py_DECREF(code_name);
    PyObject *result = NULL; /* with wrapper < 0, the error PySet_Contains set */
    if (wrapper > 0) {
        result = Py_NewRef(Py_None);
    }
    else if (wrapper == 0) {
        PyObject *qualname = PyObject_GetAttr(gen, state->str_qualname);
        if (qualname != NULL) {
            result = key(stack_name, manager_kind, qualname);
            Py_DECREF(qualname);
        }
    }
    Py_DECREF(gen);
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

/* setup(sync_cb_code, async_cb_code, kinds, generator_cm_base, wrapper_code_names), where kinds
   is (callback, async_callback, exit, async_exit, context, async_context) */
static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyCode_Check(args[0]) || !PyCode_Check(args[1]) || !PyTuple_CheckExact(args[2])
        || PyTuple_GET_SIZE(args[2]) != 6 || !PyType_Check(args[3]) || !PyFrozenSet_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(sync_cb_code, async_cb_code, kinds: 6-tuple, generator_cm_base: type, "
                        "wrapper_code_names: frozenset)");
        return NULL;
    }
    module_state *state = get_state(module);
    PyObject *values[STATE_FIELDS] = {
        args[0], args[1],
        PyTuple_GET_ITEM(args[2], 0), PyTuple_GET_ITEM(args[2], 1), PyTuple_GET_ITEM(args[2], 2),
        PyTuple_GET_ITEM(args[2], 3), PyTuple_GET_ITEM(args[2], 4), PyTuple_GET_ITEM(args[2], 5),
        args[3], args[4],
    };
    const char *names[] = {"__wrapped__", "__name__", "__exit__", "__aexit__", "gen", "__qualname__"};
    for (int i = 0; i < 6; i++) {
        values[10 + i] = PyUnicode_InternFromString(names[i]);
        if (values[10 + i] == NULL) {
            for (int j = 10; j < 10 + i; j++) {
                Py_DECREF(values[j]);
            }
            return NULL;
        }
    }
    PyObject **fields = state_fields(state);
    for (int i = 0; i < STATE_FIELDS; i++) {
        if (i < 10) {
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
     "setup(sync_cb_code, async_cb_code, kinds, generator_cm_base, wrapper_code_names)."},
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
