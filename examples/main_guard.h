// main_guard.h — how every Aqueduct program ends: one clear line and a non-zero exit on bad input.
//
// run_main calls the program body; an aq::Error (bad flag value, bad file, bad shape) or a CLI11 parse error
// becomes exactly one line "<program>: error: <what is wrong and how to fix it>" on stderr and exit code 1
// (2 for command-line syntax). --help prints usage and exits 0.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>

#include "runtime/error.h"

namespace aq {

inline int run_main(const char* program, CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (run %s --help for the list of options)\n", program, e.what(), program);
    return 2;
  }
  try {
    body();
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory; lower --batch or --seq, or use a smaller model\n", program);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
  }
  return 1;
}

}  // namespace aq
