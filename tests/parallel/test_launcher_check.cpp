// test_launcher_check.cpp — independent_tasks_error on faked launcher environments (no Slurm, no mpirun).
//
// The environments are the ones Slurm 22.05 and Open MPI 4.1 actually set (read from a single-node Slurm on
// Debian 12): a bare `srun -n 2` gives SLURM_STEP_NUM_TASKS=2 and no PMI/PMIx variables; `srun --mpi=pmix`
// adds PMIX_RANK; `srun --mpi=pmi2` PMI_SIZE; an sbatch script or salloc shell has SLURM_NTASKS and
// SLURM_NPROCS but neither SLURM_STEP_NUM_TASKS nor SLURM_STEP_ID; mpirun inside it adds OMPI_COMM_WORLD_SIZE.
#include <gtest/gtest.h>

#include <string>

#include "parallel/launcher_check.h"

namespace aq {
namespace {

const EnvMap kBareSrun2 = {{"SLURM_NTASKS", "2"},
                           {"SLURM_NPROCS", "2"},
                           {"SLURM_STEP_NUM_TASKS", "2"},
                           {"SLURM_STEP_ID", "0"},
                           {"SLURM_PROCID", "1"}};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(LauncherCheck, BareSrunWithSeveralTasksIsRefusedWithTheFix) {
  const std::string e = independent_tasks_error(kBareSrun2, 1, true);
  EXPECT_TRUE(has(e, "one of 2 tasks of a Slurm job step (SLURM_STEP_NUM_TASKS=2)")) << e;
  EXPECT_TRUE(has(e, "srun --mpi=pmix -n 2")) << e;
  EXPECT_TRUE(has(e, "mpirun inside the allocation")) << e;
  EXPECT_TRUE(has(e, "AQ_ALLOW_INDEPENDENT_TASKS=1")) << e;
  EXPECT_FALSE(has(e, "rebuild")) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << "one line";
}

TEST(LauncherCheck, TheOverrideLetsIndependentTasksRun) {
  EnvMap env = kBareSrun2;
  env["AQ_ALLOW_INDEPENDENT_TASKS"] = "1";
  EXPECT_EQ(independent_tasks_error(env, 1, true), "");
  env["AQ_ALLOW_INDEPENDENT_TASKS"] = "0";  // only "1" asks for it
  EXPECT_NE(independent_tasks_error(env, 1, true), "");
}

TEST(LauncherCheck, ARealWorldIsLeftAlone) {
  EnvMap pmix = kBareSrun2;
  pmix["PMIX_RANK"] = "1";
  EXPECT_EQ(independent_tasks_error(pmix, 2, true), "");  // srun --mpi=pmix -n 2
  EnvMap mpirun = {{"SLURM_NTASKS", "4"}, {"SLURM_NPROCS", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"PMIX_RANK", "3"}};
  EXPECT_EQ(independent_tasks_error(mpirun, 4, true), "");  // mpirun inside an sbatch -n 4 allocation
  // A Slurm step count beside a real world (mpirun started from inside an srun step): the world decides.
  mpirun["SLURM_STEP_NUM_TASKS"] = "2";
  EXPECT_EQ(independent_tasks_error(mpirun, 4, true), "");
}

TEST(LauncherCheck, OneProcessIsLeftAlone) {
  EXPECT_EQ(independent_tasks_error({}, 1, true), "");   // no launcher at all
  EXPECT_EQ(independent_tasks_error({}, 1, false), "");  // nor in a build without MPI
  EXPECT_EQ(independent_tasks_error({{"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_NTASKS", "8"}}, 1, true), "");  // srun -n 1
  // mpirun -np 1 inside an allocation of 2: Open MPI's own count decides.
  EXPECT_EQ(
      independent_tasks_error({{"OMPI_COMM_WORLD_SIZE", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_NPROCS", "2"}}, 1, true),
      "");
  EXPECT_EQ(independent_tasks_error({{"SLURM_NTASKS", "1"}}, 1, true), "");
  EXPECT_EQ(independent_tasks_error({{"SLURM_NTASKS", "not a number"}}, 1, true), "");
  EXPECT_EQ(independent_tasks_error({{"SLURM_NTASKS", ""}}, 1, true), "");
}

TEST(LauncherCheck, OneProcessInAnAllocationIsLeftAlone) {
  // `aq-train` (or ctest) typed straight into an sbatch -n 2 script or salloc -n 2 shell: one process, no step.
  EXPECT_EQ(independent_tasks_error({{"SLURM_NTASKS", "2"}, {"SLURM_NPROCS", "2"}, {"SLURM_PROCID", "0"}}, 1, true),
            "");
}

TEST(LauncherCheck, AStepWithoutItsTaskCountFallsBackToTheJobs) {
  // Slurm versions without SLURM_STEP_NUM_TASKS: inside a step (SLURM_STEP_ID), SLURM_NTASKS or SLURM_NPROCS.
  const std::string e = independent_tasks_error({{"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}}, 1, true);
  EXPECT_TRUE(has(e, "one of 2 tasks of a Slurm job step (SLURM_NTASKS=2)")) << e;
  EXPECT_TRUE(has(e, "srun --mpi=pmix -n 2")) << e;
  const std::string old = independent_tasks_error({{"SLURM_NPROCS", "3"}, {"SLURM_STEPID", "0"}}, 1, true);
  EXPECT_TRUE(has(old, "SLURM_NPROCS=3")) << old;
}

TEST(LauncherCheck, PmixWithoutAWorldIsStillRefused) {
  EnvMap env = kBareSrun2;
  env["PMIX_RANK"] = "0";
  const std::string e = independent_tasks_error(env, 1, true);
  EXPECT_TRUE(has(e, "(SLURM_STEP_NUM_TASKS=2) started with PMIx, but MPI_Init found a world of 1")) << e;
  EXPECT_TRUE(has(e, "mpirun inside the allocation")) << e;
  EXPECT_FALSE(has(e, "srun --mpi=pmix")) << e;  // that was tried
}

TEST(LauncherCheck, MpiLauncherWithoutMpiInTheBuild) {
  const std::string e = independent_tasks_error({{"OMPI_COMM_WORLD_SIZE", "3"}}, 1, false);
  EXPECT_TRUE(has(e, "one of 3 ranks (OMPI_COMM_WORLD_SIZE=3)")) << e;
  EXPECT_TRUE(has(e, "this build has no MPI")) << e;
  EXPECT_TRUE(has(e, "libopenmpi-dev")) << e;
  const std::string s = independent_tasks_error(kBareSrun2, 1, false);
  EXPECT_TRUE(has(s, "rebuild with MPI")) << s;
}

TEST(LauncherCheck, MpiLauncherThatMpiDidNotJoin) {
  // PMI_SIZE from a launcher this MPI library does not speak (e.g. MPICH's Hydra with an Open MPI build): MPI
  // comes up as a singleton.
  const std::string e = independent_tasks_error({{"PMI_SIZE", "4"}, {"PMI_RANK", "2"}}, 1, true);
  EXPECT_TRUE(has(e, "one of 4 ranks (PMI_SIZE=4) but MPI_Init found a world of 1")) << e;
  EXPECT_TRUE(has(e, "srun --mpi=pmix -n 4")) << e;
}

}  // namespace
}  // namespace aq
