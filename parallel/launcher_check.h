// launcher_check.h — refuses a process that is one of several launched tasks but found no MPI world.
//
// A bare `srun -n 2 aq-train …` on a cluster whose MpiDefault is none (or a build without MPI started by
// mpirun) starts N processes that each see a world of one: N independent trainings reading the same data and
// writing the same --save file, without a word. The launcher's environment still says how many tasks it
// started, so ParallelContext::init compares that count with the world MPI gave (or 1 without MPI) and
// refuses with one line naming the cause and the fix, unless AQ_ALLOW_INDEPENDENT_TASKS=1 asks for it.
// Pure on an environment map (no getenv here), so tests can fake any launcher.
#pragma once

#include <map>
#include <string>

namespace aq {

using EnvMap = std::map<std::string, std::string>;

// The variables independent_tasks_error reads, taken from this process's environment.
EnvMap launcher_env();

// The one-line reason to refuse (without the "program: error: " prefix), or "" to go on. `world_size` is the
// MPI world found (1 when MPI was not initialised); `built_with_mpi` whether this binary has MPI at all.
// Launchers checked, the MPI launcher's own count first (it is what MPI should have joined):
//   OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), PMI_SIZE (PMI-1/2: MPICH/Hydra, Intel MPI, srun --mpi=pmi2, Flux),
//   then Slurm's count of tasks in this step: SLURM_STEP_NUM_TASKS (set for every srun task), else SLURM_NTASKS /
//   SLURM_NPROCS when SLURM_STEP_ID says this is a step. An sbatch script or salloc shell (SLURM_NTASKS without a
//   step) is one process and is left alone.
// Only a world of one is judged: a real world (mpirun inside an allocation, srun --mpi=pmix) is left alone.
std::string independent_tasks_error(const EnvMap& env, int world_size, bool built_with_mpi);

}  // namespace aq
