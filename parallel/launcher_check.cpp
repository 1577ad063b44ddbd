// launcher_check.cpp — see launcher_check.h: the launcher's task count against the MPI world that was found.
#include "parallel/launcher_check.h"

#include <cstdlib>

#include "runtime/error.h"

namespace aq {
namespace {

// The variables read below; launcher_env copies just these.
const char* const kVars[] = {"AQ_ALLOW_INDEPENDENT_TASKS",
                             "OMPI_COMM_WORLD_SIZE",
                             "PMI_SIZE",
                             "PMIX_RANK",
                             "SLURM_STEP_NUM_TASKS",
                             "SLURM_NTASKS",
                             "SLURM_NPROCS",
                             "SLURM_STEP_ID",
                             "SLURM_STEPID"};

// A positive task count, or 0 when the variable is absent or not a number.
long count_of(const EnvMap& env, const std::string& var) {
  auto it = env.find(var);
  if (it == env.end() || it->second.empty()) return 0;
  char* end = nullptr;
  const long n = std::strtol(it->second.c_str(), &end, 10);
  return *end == '\0' && n > 0 ? n : 0;
}

const char* const kOverride = "; or set AQ_ALLOW_INDEPENDENT_TASKS=1 to run them as independent trainings on purpose";

}  // namespace

EnvMap launcher_env() {
  EnvMap env;
  for (const char* var : kVars)
    if (const char* v = std::getenv(var)) env[var] = v;
  return env;
}

std::string independent_tasks_error(const EnvMap& env, int world_size, bool built_with_mpi) {
  if (world_size != 1) return "";  // MPI joined the tasks: whatever the launcher said, this is a real world
  auto allow = env.find("AQ_ALLOW_INDEPENDENT_TASKS");
  if (allow != env.end() && allow->second == "1") return "";
  // An MPI launcher's own count decides when it is there: mpirun -np 1 inside a Slurm allocation of 8 is fine.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    const long n = count_of(env, var);
    if (n == 0) continue;
    if (n == 1) return "";
    if (!built_with_mpi)
      return str("started by an MPI launcher as one of ", n, " ranks (", var, "=", n,
                 ") but this build has no MPI, so each rank would train alone as a world of 1 on the same data and "
                 "--save file; install libopenmpi-dev and rebuild (./scripts/build.sh)",
                 kOverride);
    return str("started by an MPI launcher as one of ", n, " ranks (", var, "=", n,
               ") but MPI_Init found a world of 1, so each rank would train alone on the same data and --save file: "
               "the launcher does not match the MPI library this program was built with; launch with that "
               "library's mpirun, or srun --mpi=pmix -n ",
               n, kOverride);
  }
  const std::string rebuild = built_with_mpi ? "" : "rebuild with MPI (install libopenmpi-dev), then ";
  if (const long n = count_of(env, "SLURM_STEP_NUM_TASKS")) {
    if (n == 1) return "";                         // srun -n 1 inside a larger allocation: one task, one world
    if (env.count("PMIX_RANK") && built_with_mpi)  // srun --mpi=pmix, but the MPI library did not join it
      return str("this process is one of ", n, " tasks of a Slurm job step (SLURM_STEP_NUM_TASKS=", n,
                 ") started with PMIx, but MPI_Init found a world of 1, so each task would train alone on the same "
                 "data and --save file: the MPI library this program was built with does not join srun's PMIx; "
                 "launch with that library's mpirun inside the allocation",
                 kOverride);
    return str("this process is one of ", n, " tasks of a Slurm job step (SLURM_STEP_NUM_TASKS=", n,
               ") but no MPI world was found (world size 1, no PMI or PMIx in the environment), so each task would "
               "train alone on the same data and --save file; ",
               rebuild, "launch with srun --mpi=pmix -n ", n, " (or mpirun inside the allocation)", kOverride);
  }
  // A Slurm without SLURM_STEP_NUM_TASKS: the job's task count, but only inside a step (srun sets SLURM_STEP_ID).
  // An sbatch script or salloc shell has SLURM_NTASKS too, yet runs one process there: nothing is duplicated, and
  // single-process runs (and the test suite) inside an allocation must keep working.
  if (env.count("SLURM_STEP_ID") || env.count("SLURM_STEPID"))
    for (const char* var : {"SLURM_NTASKS", "SLURM_NPROCS"}) {
      const long n = count_of(env, var);
      if (n == 0) continue;
      if (n == 1) return "";
      return str("this process is one of ", n, " tasks of a Slurm job step (", var, "=", n,
                 ") but no MPI world was found (world size 1), so each task would train alone on the same data and "
                 "--save file; ",
                 rebuild, "launch with srun --mpi=pmix -n ", n, " (or mpirun inside the allocation)", kOverride);
    }
  return "";
}

}  // namespace aq
