"""From a routing trace (or a dense model's shape) to the step and access stream every engine replays."""
