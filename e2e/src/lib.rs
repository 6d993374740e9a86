//! outsock-e2e: end-to-end tests of process mode (tests/) and the `outsock-demo` program, both
//! on top of `testworld::stack`.

#![forbid(unsafe_code)]
