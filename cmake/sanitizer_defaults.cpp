// Default options of the sanitizer runtimes in a -DSY_SANITIZE build, compiled
// into every executable (ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS in the
// environment still override them), so ctest, gtest's test discovery and a
// user's own runs behave the same:
//   - every UndefinedBehaviorSanitizer report is an error (halt_on_error),
//     printed with its stack;
//   - LeakSanitizer stays on. OpenMPI keeps what MPI_Init allocates (its
//     operation, datatype and component tables, hwloc's topology) until exit,
//     partly in plugins it unloads at MPI_Finalize, so those leak reports
//     carry an OpenMPI frame only when allocation stacks are unwound fully
//     (fast_unwind_on_malloc=0: about 1.5x slower); the suppressions below
//     match those libraries' frames. A leak whose stack holds no such frame
//     (anything Switchyard allocates itself) is still reported.
extern "C" {

__attribute__((visibility("default"), used)) const char* __asan_default_options() {
  return "detect_leaks=1:fast_unwind_on_malloc=0:check_initialization_order=1:strict_init_order=1";
}

__attribute__((visibility("default"), used)) const char* __ubsan_default_options() {
  return "print_stacktrace=1:halt_on_error=1";
}

__attribute__((visibility("default"), used)) const char* __lsan_default_suppressions() {
  return "leak:libmpi.so\n"
         "leak:libopen-pal.so\n"
         "leak:libopen-rte.so\n"
         "leak:libhwloc.so\n";
}

}  // extern "C"
