/* execl, execlp and execle for libtssx_preload.so.
 *
 * glibc's own execl* call its internal execve, which the hook cannot see. These collect the
 * variadic arguments (C varargs, which stable Rust cannot define) into an argv array and call
 * the hook's execv, execvp or execve (tssx_shim_*, defined in lib.rs and hidden here, so the
 * shim never calls an interposed name through the PLT): swapped fds that survive the exec are
 * handed to the new image (see tssx-hook's exec.rs). The exported execl/execlp/execle are
 * naked Rust trampolines that jump here with the caller's registers and stack untouched; the
 * functions below are hidden (compiled with -fvisibility=hidden). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#define TSSX_HIDDEN __attribute__((visibility("hidden")))

/* The hook's execv, execvp and execve (lib.rs). */
TSSX_HIDDEN int tssx_shim_execv(const char *path, char *const *argv);
TSSX_HIDDEN int tssx_shim_execvp(const char *file, char *const *argv);
TSSX_HIDDEN int tssx_shim_execve(const char *path, char *const *argv, char *const *envp);

/* More arguments than this fail with E2BIG (the kernel's own limit is far lower in bytes). */
#define TSSX_MAX_ARGS 8192

/* Fills argv from `first` and the va_list up to the terminating NULL; returns 0 or -1. */
static int tssx_collect(const char **argv, const char *first, va_list *ap) {
    size_t n = 0;
    argv[n++] = first;
    while (argv[n - 1] != NULL) {
        if (n == TSSX_MAX_ARGS) {
            errno = E2BIG;
            return -1;
        }
        argv[n++] = va_arg(*ap, const char *);
    }
    return 0;
}

TSSX_HIDDEN int tssx_execl(const char *path, const char *arg, ...) {
    const char *argv[TSSX_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int rc = tssx_collect(argv, arg, &ap);
    va_end(ap);
    return rc < 0 ? -1 : tssx_shim_execv(path, (char *const *)argv);
}

TSSX_HIDDEN int tssx_execlp(const char *file, const char *arg, ...) {
    const char *argv[TSSX_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int rc = tssx_collect(argv, arg, &ap);
    va_end(ap);
    return rc < 0 ? -1 : tssx_shim_execvp(file, (char *const *)argv);
}

TSSX_HIDDEN int tssx_execle(const char *path, const char *arg, ...) {
    const char *argv[TSSX_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int rc = tssx_collect(argv, arg, &ap);
    char *const *envp = va_arg(ap, char *const *); /* after the NULL that ends argv */
    va_end(ap);
    return rc < 0 ? -1 : tssx_shim_execve(path, (char *const *)argv, envp);
}
