// main_guard.h — how every Aqueduct program ends: one clear line and a non-zero exit on bad input.
//
// run_main calls the program body; an aq::Error (bad flag value, bad file, bad shape) or a CLI11 parse error
// becomes exactly one line "<program>: error: <what is wrong and how to fix it>" on stderr and exit code 1
// (2 for command-line syntax). --help prints usage and exits 0. Under mpirun, errors are the same on every
// rank (the trainer agrees on set-up failures), so rank 0 alone prints and every rank exits with the code.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>

#include "parallel/context.h"
#include "runtime/error.h"

namespace aq {

inline int run_main(const char* program, CLI::App& app, int argc, char** argv, ParallelContext& ctx,
                    const std::function<void()>& body) {
  const bool reporter = ctx.world_rank() == 0;
  int code = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help and friends
    code = reporter ? app.exit(e) : 0;
    ctx.finalize();
    return code;
  } catch (const CLI::ParseError& e) {
    if (reporter)
      std::fprintf(stderr, "%s: error: %s (run %s --help for the list of options)\n", program, e.what(), program);
    ctx.finalize();
    return 2;
  }
  try {
    body();
  } catch (const CommError&) {
    ctx.abort(3);  // already reported by the rank that saw it; end every rank
  } catch (const Error& e) {
    if (reporter) std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    code = 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory on rank %d; lower --batch or --seq, or use a smaller model\n",
                 program, ctx.world_rank());
    ctx.abort(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s (rank %d)\n", program, e.what(), ctx.world_rank());
    ctx.abort(1);
  }
  ctx.finalize();
  return code;
}

// Single-process programs.
inline int run_main(const char* program, CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  return run_main(program, app, argc, argv, ParallelContext::local(), body);
}

}  // namespace aq
