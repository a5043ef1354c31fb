"""The shared start of the Python FTPS clients the lab tests run inside the client namespace
(`python3 -c <script>`): an unverified TLS context (the lab's certificates are self-signed)
and `ReusingFTP_TLS`. ftplib does not resume the control connection's TLS session on data
connections (vsftpd's `require_ssl_reuse` then refuses them, and ftpalg's terminate mode
accepts resumption as FileZilla and curl use it): this subclass does, as curl and lftp do.
Each script adds its imports, its arguments and what it does."""

PREAMBLE = """
import ftplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE


class ReusingFTP_TLS(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size
"""
