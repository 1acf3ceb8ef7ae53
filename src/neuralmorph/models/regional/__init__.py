"""The regional family (LAMM): one global code, region tokens, control-vertex edits."""
