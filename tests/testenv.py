"""What every test that starts Switchyard's tools needs, in one place.

mpi_env(**extra): the environment for moe-train / moe-launch / mpiexec in a
test: OpenMPI may run as root (CI runs as root) and oversubscribe the two
cores (tests start more ranks than there are cores), and ranks waiting in MPI
yield the CPU instead of spinning (oversubscribed ranks would otherwise starve
each other). `extra` adds or overrides variables (OMP_NUM_THREADS, ...).
"""
import os


def mpi_env(**extra):
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1", **extra)
