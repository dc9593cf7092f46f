//! llmgw-cluster: the gateway's life on a SLURM cluster, and nothing about HTTP requests.
//! The sbatch template and the wrappers around SLURM's commands ([`slurm`]), the chain of
//! jobs a renewing gateway is ([`slurm::chain`], [`renew`]), where the job's backends go
//! ([`placement`]), the launched backends' processes ([`supervise`]) and the node agent
//! that runs them on the job's other nodes ([`supervise::agent`]), and stopping when idle
//! ([`idle`]).

pub mod idle;
pub mod placement;
pub mod renew;
pub mod slurm;
pub mod supervise;
