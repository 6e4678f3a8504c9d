"""Pure analyses on captured attention: word merging, head ranking, rollout, sinks."""
