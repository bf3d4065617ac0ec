"""Method plugins. Each module holds one method, registered under the ``editbench.methods`` entry points."""
