"""Rules beyond the schemas: Kestra's flow rules, reference checks, governance (all pure)."""
