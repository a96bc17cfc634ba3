this is not SQL and must be ignored because the name starts with a dot
