"""Getting the champion to the running service: the champion's history (alias moves), rollout,
post-deploy check and rollback on each target the project ships."""
