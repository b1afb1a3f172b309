"""The ``shtrih`` backend: a Shtrih-M ККТ driven directly with its protocol 1, no vendor library.

Modules, bottom up:

``link``
    the protocol-1 link layer (ENQ / ACK / NAK, ``STX LEN CMD DATA LRC`` frames) over a serial
    port (pyserial: RS-232, USB-CDC) or a TCP socket, with retransmission, recovery of a lost
    answer by ENQ, and hot-plug;
``commands``
    the byte layouts of the commands markd sends and of their answers;
``errors``
    the device's error codes as markd's typed faults, with their Russian and English text;
``printer``
    :class:`~markd.fiscal.shtrih.printer.ShtrihPrinter`, the
    :class:`~markd.fiscal.base.FiscalPrinter` built on them.

Public sources of the layouts (read for facts, none of their code is used): the vendor's
JavaPOS driver ``shtrih-m/javapos_shtrih`` (``commands.xml``, ``PrinterProtocol_1.java``, the
``FS*`` command classes, ``SMFiscalPrinterImpl``), the vendor's note on ФФД 1.2 («Доработка
драйвера под ФФД 1_2»), its example ``shtrih-m/fr_drv_ng_examples`` (the sale order of
``fsOperationReceipt_FFD_1_2``) and the protocol document «Протокол работы ККТ» v2.0 (the link
layer). Nothing here is shared with the Shtrih emulator: each side reads the public layouts on
its own, so the tests between them check both readings.

This package imports nothing when the URL registry is loaded; the printer module is imported
only when a ``shtrih://`` URL is parsed or opened.
"""
